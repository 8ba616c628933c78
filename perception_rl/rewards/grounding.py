"""Visual grounding (REC) reward, Perception-R1 (seed_spec A4).

    total = accuracy_weight * IoU(pred, gt) ** iou_power + format_weight * format

The predicted box is the first box PR1's parser finds (`parse.first_box`); IoU has no epsilon
(PR1's grounding IoU) and is 0 when no valid box is found (no match, inverted, out of range).
``format`` is the full Qwen2-VL template by default; ``format_check='pr1_lenient'`` reproduces
the released regex (any completion starting with a special token passes) and ``'json'`` checks
the Qwen2.5-VL JSON form. Target: ``{"box": [x1, y1, x2, y2]}`` in the policy's coordinates.
Range: [0, accuracy_weight + format_weight] = [0, 2] by default.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from perception_rl.rewards import boxes, layout, parse


@dataclasses.dataclass(frozen=True)
class GroundingConfig:
    """Constants of the grounding reward.

    Attributes:
      iou_power: exponent on IoU (PR1's code squares it; the paper says IoU).
      format_check: ``'strict'`` (Qwen2-VL template), ``'json'`` (Qwen2.5-VL) or
        ``'pr1_lenient'`` (PR1's released behaviour).
      accuracy_weight: weight of the IoU term.
      format_weight: weight of the format term.
      max_abs_coordinate: larger coordinate magnitudes make the box invalid.
    """

    iou_power: float = 2.0
    format_check: str = "strict"
    accuracy_weight: float = 1.0
    format_weight: float = 1.0
    max_abs_coordinate: float = 1e6

    def value_range(self) -> tuple[float, float]:
        return 0.0, self.accuracy_weight + self.format_weight


@functools.partial(jax.jit, static_argnames="config")
def grounding_terms(
    pred: jax.Array, valid: jax.Array, gt: jax.Array, fmt: jax.Array, config: GroundingConfig
) -> dict[str, jax.Array]:
    """Array part of the reward.

    Args:
      pred: ``[B, 1, 4]`` parsed boxes; valid: ``[B, 1]``; gt: ``[B, 4]``; fmt: ``[B]`` in {0, 1}.

    Returns:
      ``iou``, ``format`` and ``total``, each ``[B]``.
    """
    iou = jnp.where(valid[:, 0], boxes.iou(pred[:, 0], gt), 0.0)
    total = config.accuracy_weight * iou**config.iou_power + config.format_weight * fmt
    return {"iou": iou, "format": fmt, "total": total}


def grounding(
    completions: Sequence[str],
    targets: Sequence[Mapping],
    *,
    group_size: int,
    rows: int,
    config: GroundingConfig,
) -> dict[str, np.ndarray]:
    """Grounding reward components over ``rows`` padded completions (see module doc)."""
    pred = parse.first_box(completions, rows=rows, max_abs=config.max_abs_coordinate)
    fmt = parse.grounding_format(
        completions, config.format_check, rows=rows, max_abs=config.max_abs_coordinate
    )
    gt, _ = layout.per_completion(
        layout.target_rows(targets, "box", 4), group_size, rows, width=4, minimum=1
    )
    terms = grounding_terms(pred.boxes, pred.valid, gt[:, 0], fmt, config)
    return {k: np.asarray(v) for k, v in terms.items()}
