"""Visual counting reward, Perception-R1 (seed_spec A5): detect-then-count on box centres.

With P the centres of the parsed ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` spans (n_p of
them) and Z the ground-truth points (n_g), matched one-to-one by Hungarian on L2 distance:

    total = format * min(n_p, n_g) / max(n_p, n_g) * max(0, 1 - mean matched L2 / distance_scale)

``format`` is PR1's gate (`parse.counting_format`); the total is 0 when it fails or when either
set is empty. ``distance_scale`` is 1000·√2, the diagonal of Qwen2-VL's 0-1000 frame; the
``max(0, ·)`` only bites on coordinates outside that frame (PR1 would go negative there).
``matching='sequential'`` is the paper's "w/o reward matching" ablation. Target:
``{"points": [[x, y], ...]}``. Range: [0, 1].
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from perception_rl.rewards import boxes, layout, matching, parse


@dataclasses.dataclass(frozen=True)
class CountingConfig:
    """Constants of the counting reward.

    Attributes:
      distance_scale: L2 normaliser (the 0-1000 frame's diagonal).
      matching: ``'hungarian'`` (PR1) or ``'sequential'`` (index order, ablation).
      max_boxes: at most this many spans per completion are matched (all are counted).
      max_abs_coordinate: larger coordinate magnitudes invalidate a span.
    """

    distance_scale: float = 1000.0 * math.sqrt(2.0)
    matching: str = "hungarian"
    max_boxes: int = 512
    max_abs_coordinate: float = 1e6

    def value_range(self) -> tuple[float, float]:
        return 0.0, 1.0


@jax.jit
def distance_matrix(pred_boxes: jax.Array, gt_points: jax.Array) -> jax.Array:
    """``[B, N, M]`` L2 distances between predicted box centres and ground-truth points."""
    return boxes.l2(*boxes.pairs(boxes.centers(pred_boxes), gt_points))


@functools.partial(jax.jit, static_argnames="config")
def counting_terms(
    pred_boxes: jax.Array,
    num_pred: jax.Array,
    gt_points: jax.Array,
    num_gt: jax.Array,
    assignment: jax.Array,
    fmt: jax.Array,
    config: CountingConfig,
) -> dict[str, jax.Array]:
    """Array part of the reward, given the host-side ``assignment`` (bool ``[B, N, M]``).

    Returns:
      ``format``, ``count_ratio``, ``closeness`` (the ``max(0, 1 - d/scale)`` factor) and
      ``total``, each ``[B]``.
    """
    dist = distance_matrix(pred_boxes, gt_points)
    matched = assignment.sum((1, 2))
    mean_dist = boxes.safe_div(jnp.where(assignment, dist, 0).sum((1, 2)), matched)
    closeness = jnp.maximum(0.0, 1.0 - mean_dist / config.distance_scale)
    num_pred, num_gt = num_pred.astype(jnp.float32), num_gt.astype(jnp.float32)
    ratio = boxes.safe_div(jnp.minimum(num_pred, num_gt), jnp.maximum(num_pred, num_gt))
    gate = fmt * ((num_pred > 0) & (num_gt > 0))
    return {
        "format": fmt,
        "count_ratio": ratio,
        "closeness": closeness,
        "total": gate * ratio * closeness,
    }


def counting(
    completions: Sequence[str],
    targets: Sequence[Mapping],
    *,
    group_size: int,
    rows: int,
    config: CountingConfig,
) -> dict[str, np.ndarray]:
    """Counting reward components over ``rows`` padded completions (see module doc)."""
    pred = parse.qwen2_boxes(
        completions, rows=rows, max_boxes=config.max_boxes, max_abs=config.max_abs_coordinate
    )
    gt, gt_valid = layout.per_completion(
        layout.target_rows(targets, "points", 2), group_size, rows, width=2
    )
    num_rows, num_gt = pred.valid.sum(1), gt_valid.sum(1)
    if config.matching == "hungarian":
        cost = np.asarray(distance_matrix(pred.boxes, gt))
        assignment = matching.hungarian(cost, num_rows, num_gt)
    elif config.matching == "sequential":
        assignment = matching.sequential(pred.valid.shape + gt_valid.shape[1:], num_rows, num_gt)
    else:
        raise ValueError(f"unknown counting matching {config.matching!r}")
    fmt = parse.counting_format(completions, rows=rows)
    terms = counting_terms(pred.boxes, pred.num_valid, gt, num_gt, assignment, fmt, config)
    return {k: np.asarray(v) for k, v in terms.items()}
