"""The errors a user can fix, and the exit statuses of `perception_rl.main`.

Every anticipated failure (a config that cannot run, a path that is missing or not writable, data
that does not match the task, an unreadable checkpoint) raises a `UsageError` whose message names
what is wrong (file, field, value); `main` prints it as one line and exits with `EXIT_USAGE`.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

EXIT_USAGE = 2
# A run stopped by SIGTERM after checkpointing: resumable, not finished (sysexits' EX_TEMPFAIL,
# "try again later"), so `cmd && next` and schedulers do not take it for a finished run.
EXIT_INTERRUPTED = 75


class UsageError(Exception):
    """An error the user can fix; printed as one line by `perception_rl.main`."""


class ConfigError(UsageError, ValueError):
    """A config that cannot run (unknown value, out of range, inconsistent sizes)."""


class DataError(UsageError, ValueError):
    """Data that cannot be used: a malformed record, an unreadable image, the wrong task."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be written or read."""


def one_line(message: object, limit: int = 600) -> str:
    """`message` on one line (whitespace collapsed), at most `limit` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def config_value(config, dotted: str) -> Any:
    """`config.a.b` for `dotted="a.b"`, or None where a level is absent or None (callers may
    hand in a partial config, e.g. a test's; the defaults live in configs/common.py only)."""
    value = config
    for key in dotted.split("."):
        value = value.get(key) if hasattr(value, "get") else getattr(value, key, None)
        if value is None:
            return None
    return value


def require_at_least(config, minimum: int, *dotted: str) -> None:
    """Raises ConfigError for the first `config.<dotted>` below `minimum` (None is skipped):
    a step count of -3 must not run zero steps and exit 0."""
    for name in dotted:
        value = config_value(config, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{name}={value}; must be >= {minimum}.")
