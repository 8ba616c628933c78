"""Command line: GRPO training, SFT and evaluation from one ml_collections config.

    python -m perception_rl.main --config=configs/smoke.py --workdir=/tmp/run \\
        [--mode=train|sft|eval|recipe] [--config.key=value ...]

`train` runs GRPO (`perception_rl.rl.trainer.train`), `sft` supervised fine-tuning
(`perception_rl.rl.sft.train`), `eval` the evaluation runner
(`perception_rl.eval.runner.evaluate`). A workdir that already holds a run resumes it.

Multi-host: with `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` set (see
experiments/local_two_process.sh), or inside a SLURM job or on a multi-host TPU slice, every
process calls `jax.distributed.initialize` before touching a device; all processes run the same
command and share the workdir.

Exit statuses (README "Errors"): 0 the mode finished; 2 an anticipated error, printed as one
line on stderr naming the file, field or value (a config that cannot run, a workdir that is a
file or not writable, a missing checkpoint, data that does not match the task, a full disk or
an unreadable checkpoint); 75 stopped by SIGTERM after checkpointing (rerun to resume); anything
else is a bug and keeps its traceback (as does every error with PERCEPTION_RL_TRACEBACK=1).
"""

from __future__ import annotations

import errno
import logging as std_logging
import os
import re
import sys
import uuid

from absl import app, flags, logging
from ml_collections import config_flags

from perception_rl import errors

MODES = ("train", "sft", "eval", "recipe")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Run config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, exports).")
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    MODES,
    "train (GRPO), sft, eval or recipe (SFT, GRPO, "
    "evals, report); default: config.mode, else train.",
)


def fail(message: object, kind: str = "config", *, hard: bool = False) -> None:
    """Prints `perception_rl.main: <kind> error: <message>` as one line; exits EXIT_USAGE.

    `hard` skips the interpreter's teardown: after a failed checkpoint write, orbax's and
    tensorstore's background threads print tracebacks at exit ("Event loop is closed", "cannot
    schedule new futures after shutdown") that say nothing the error line does not.
    """
    print(f"perception_rl.main: {kind} error: {errors.one_line(message)}", file=sys.stderr)
    if hard:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(errors.EXIT_USAGE)
    sys.exit(errors.EXIT_USAGE)


def config_error(message: str) -> None:
    fail(message, "config")


def _kind(error: errors.UsageError) -> str:
    for kind, cls in (
        ("config", errors.ConfigError),
        ("data", errors.DataError),
        ("checkpoint", errors.CheckpointError),
    ):
        if isinstance(error, cls):
            return kind
    return "usage"


def describe_os_error(error: OSError) -> str:
    """'<file>: <reason>' for an OSError (a missing path, permissions, a full disk)."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        reason += " (free space or point --workdir elsewhere)"
    names = [n for n in (error.filename, error.filename2) if n is not None]
    return f"{' -> '.join(map(str, names))}: {reason}" if names else reason


def prepare_workdir(workdir: str) -> None:
    """Creates `workdir`; fails with one line when it is a file or cannot be written."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        fail(f"--workdir={workdir} exists and is not a directory.", "usage")
    try:
        os.makedirs(workdir, exist_ok=True)
        # os.access says yes to root on a read-only mount: only a real write tells.
        probe = os.path.join(workdir, f".write_probe_{uuid.uuid4().hex}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        fail(f"--workdir={workdir} is not writable: {describe_os_error(e)}", "usage")


class _LibraryNoiseFilter(std_logging.Filter):
    """Drops log lines that read like errors but are not ours to act on: orbax's background-
    thread errors (a failed save is re-raised as one line) and TFDS's advice to install OpenCV
    (images decode with PIL here)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if "orbax" in record.pathname and record.levelno >= std_logging.ERROR:
            return False
        return not str(record.msg).startswith("OpenCV is not installed")


def _override_key(argv: list[str], missing: str) -> str:
    """The `--config.…` argument that names the missing key, for the error line."""
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name.startswith("--config.") and missing in name.split("."):
            return name[len("--config.") :]
    return missing


def _unknown_key(argv: list[str], error: Exception) -> str:
    """'unknown config key ...' from ml_collections' KeyError / AttributeError text."""
    text = str(error)
    key = re.search(r"[A-Za-z_]\w*", text)
    line = f"unknown config key {_override_key(argv, key.group() if key else text)!r}"
    if suggestion := re.search(r'Did you mean "(\w+)"', text):
        line += f"; did you mean {suggestion.group(1)!r}?"
    return line


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with config mistakes reported as one line."""
    try:
        return flags.FLAGS(argv)
    except (KeyError, AttributeError) as e:  # an override of a key the config lacks
        config_error(_unknown_key(argv, e))
    except flags.UnrecognizedFlagError as e:
        config_error(str(e).replace("Unknown command line flag 'config.", "unknown config key '"))
    except (flags.Error, ValueError, TypeError) as e:  # wrong type, unparsable value
        config_error(str(e))
    return []  # unreachable


def initialize_distributed() -> None:
    """`jax.distributed.initialize` when the environment describes a multi-process job."""
    import jax

    if address := os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(
            address, int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
        )
    elif (
        int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or os.environ.get("MEGASCALE_NUM_SLICES")
        or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    ):
        jax.distributed.initialize()  # SLURM / TPU pod: everything comes from the cluster


def run(mode: str, config, workdir: str):
    """Runs one mode; returns the mode's summary."""
    if mode == "train":
        from perception_rl.rl import trainer

        return trainer.train(config, workdir)
    if mode == "recipe":
        from perception_rl import recipe

        return recipe.run(config, workdir)
    if mode == "sft":
        from perception_rl.rl import sft

        return sft.train(config, workdir)
    from perception_rl.eval import runner

    return runner.evaluate(config, workdir)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        config_error(f"unexpected arguments {argv[1:]}")
    if _WORKDIR.value is None:
        config_error("--workdir is required")
    try:
        config = _CONFIG.value
        config.get("task")  # a config file that failed to load raises here
    except Exception as e:
        config_error(f"--config: {e}")
    if not flags.FLAGS["verbosity"].present:  # orbax and grain log every save at INFO
        logging.set_verbosity(logging.WARNING)
        std_logging.getLogger("absl").addFilter(_LibraryNoiseFilter())
    summary = _run_reporting_errors(config, _WORKDIR.value)
    if isinstance(summary, dict) and summary.get("stopped"):
        print(
            f"perception_rl.main: stopped by SIGTERM after step {summary['step']} (checkpointed;"
            f" rerun the same command to resume), exit status {errors.EXIT_INTERRUPTED}",
            file=sys.stderr,
        )
        sys.exit(errors.EXIT_INTERRUPTED)


def _run_reporting_errors(config, workdir: str):
    """`run` with the error contract of the module docstring."""
    try:
        mode = _MODE.value if flags.FLAGS["mode"].present else config.get("mode", _MODE.value)
        if mode not in MODES:
            raise errors.ConfigError(f"mode={mode!r}; expected one of {', '.join(MODES)}.")
        prepare_workdir(workdir)
        initialize_distributed()
        return run(mode, config, workdir)
    except errors.UsageError as e:
        if os.environ.get("PERCEPTION_RL_TRACEBACK"):
            raise
        fail(e, _kind(e), hard=isinstance(e, errors.CheckpointError))
    except OSError as e:  # the environment: missing or unwritable files, a full disk
        if os.environ.get("PERCEPTION_RL_TRACEBACK"):
            raise
        fail(describe_os_error(e), "usage", hard=True)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)
