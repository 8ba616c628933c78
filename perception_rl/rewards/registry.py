"""Reward registry and the single entry point used by the trainer, evaluation and users.

Adding a reward: write a module with a frozen config dataclass (every constant a field with a
default, plus ``value_range()``) and a function
``fn(completions, targets, *, group_size, rows, config) -> dict[str, np.ndarray]`` returning
``[rows]`` arrays including ``"total"``; then add one line to `REWARDS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from perception_rl.rewards import counting, detection, dip, grounding, layout, ocr


@dataclasses.dataclass(frozen=True)
class Reward:
    """A registered reward: its config dataclass and its components function."""

    config: type
    components: Callable[..., dict[str, np.ndarray]]


REWARDS: dict[str, Reward] = {
    "grounding": Reward(grounding.GroundingConfig, grounding.grounding),
    "counting": Reward(counting.CountingConfig, counting.counting),
    "ocr": Reward(ocr.OcrConfig, ocr.ocr),
    "detection": Reward(detection.DetectionConfig, detection.detection),
    "dip": Reward(dip.DipConfig, dip.dip),
}


def make_config(name: str, **options):
    """The config of reward ``name`` with ``options`` overriding its defaults.

    Raises:
      KeyError: unknown reward name.
      ValueError: an option that is not a field of the reward's config.
    """
    if name not in REWARDS:
        raise KeyError(f"unknown reward {name!r}; registered: {sorted(REWARDS)}")
    config_cls = REWARDS[name].config
    fields = {f.name for f in dataclasses.fields(config_cls)}
    if unknown := set(options) - fields:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for reward {name!r}; valid: {sorted(fields)}"
        )
    return config_cls(**options)


def value_range(name: str, **options) -> tuple[float, float]:
    """The documented ``(low, high)`` range of reward ``name``'s total under ``options``."""
    return make_config(name, **options).value_range()


def score_components(
    name: str, completions: Sequence[str], targets: Sequence[Mapping], *, group_size: int, **options
) -> dict[str, np.ndarray]:
    """Named reward components, one float32 value per completion.

    Args:
      name: a key of `REWARDS` (``grounding``, ``counting``, ``ocr``, ``detection``, ``dip``).
      completions: decoded completion strings, prompt-major (the G rollouts of prompt 0, then of
        prompt 1, ...).
      targets: one dict per prompt, in the policy's output coordinates (see each module).
      group_size: G, the rollouts per prompt.
      **options: overrides of the reward's config fields.

    Returns:
      ``{component: float32 [len(completions)]}``, always including ``"total"``.
    """
    config = make_config(name, **options)
    completions = list(completions)
    rows = layout.padded_rows(len(completions), len(targets), group_size)
    out = REWARDS[name].components(
        completions, targets, group_size=group_size, rows=rows, config=config
    )
    return {k: np.asarray(v[: len(completions)], np.float32) for k, v in out.items()}


def score(
    name: str, completions: Sequence[str], targets: Sequence[Mapping], *, group_size: int, **options
) -> np.ndarray:
    """Total reward per completion, float32 ``[len(completions)]`` (see `score_components`)."""
    return score_components(name, completions, targets, group_size=group_size, **options)["total"]
