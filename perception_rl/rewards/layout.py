"""Batch layout shared by the rewards: prompt-major groups, padded rows, per-prompt targets.

Completions are ordered prompt-major (the G rollouts of prompt 0, then of prompt 1, ...) and
targets come one per prompt. Rewards work on ``rows = bucket(num_prompts) * G`` padded rows, so
a run with a fixed G compiles one program per prompt-count bucket; padding rows hold no boxes
and are sliced off by the registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from perception_rl.rewards import parse


def padded_rows(num_completions: int, num_prompts: int, group_size: int) -> int:
    """Checks the prompt-major layout and returns the padded row count.

    Raises:
      ValueError: if ``num_completions != num_prompts * group_size`` or ``group_size < 1``.
    """
    if group_size < 1 or num_completions != num_prompts * group_size:
        raise ValueError(
            f"expected len(completions) == len(targets) * group_size, got {num_completions} "
            f"completions, {num_prompts} targets, group_size={group_size}"
        )
    return parse.bucket(num_prompts, minimum=1) * group_size


def target_rows(
    targets: Sequence[Mapping], key: str, width: int, *, required: bool = True
) -> list[np.ndarray]:
    """``targets[i][key]`` as float64 ``[n_i, width]`` arrays.

    A value is a list of ``width``-number lists, or a single flat ``width``-number list.

    Raises:
      KeyError: if ``required`` and a target lacks ``key`` (otherwise it is an empty set).
      ValueError: if a target value does not have ``width`` numbers per element.
    """
    out = []
    for i, target in enumerate(targets):
        value = np.asarray(target[key] if required else target.get(key, ()), np.float64)
        if value.ndim == 1 and value.size == width:
            value = value[None]
        if value.size and (value.ndim != 2 or value.shape[1] != width):
            raise ValueError(
                f"targets[{i}][{key!r}] must be a list of {width}-number lists, "
                f"got shape {value.shape}"
            )
        out.append(value.reshape(-1, width))
    return out


def per_completion(
    items: Sequence[np.ndarray],
    group_size: int,
    rows: int,
    *,
    width: int,
    minimum: int = parse.MIN_BUCKET,
) -> tuple[np.ndarray, np.ndarray]:
    """Packs per-prompt ``[n_i, d]`` arrays and repeats them over each group.

    Returns:
      ``(values, valid)``: float32 ``[rows, M, d]`` and bool ``[rows, M]``, row ``p * G + g``
      holding prompt p's set.
    """
    values, valid = parse.pack(items, rows // group_size, width=width, minimum=minimum)
    return np.repeat(values, group_size, axis=0), np.repeat(valid, group_size, axis=0)
