"""Visual counting reward, Perception-R1 (seed_spec A5): detect-then-count on box centres.

With P the centres of the parsed ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` spans (n_p of
them) and Z the ground-truth points (n_g), matched one-to-one by Hungarian on L2 distance:

    total = format * min(n_p, n_g) / max(n_p, n_g) * max(0, 1 - mean matched L2 / distance_scale)

``format`` is PR1's gate (`parse.counting_format`); the total is 0 when it fails or when either
set is empty. Distances are taken in the policy's frame mapped to 0-1000 per axis (DESIGN §3):
x·1000/W, y·1000/H, with ``(W, H)`` the target's ``frame`` (the smart-resized image for
Qwen2.5-VL's pixel coordinates; 1000×1000, i.e. unchanged, for Qwen2-VL, which is PR1). Without
that mapping a fixed 1000·√2 scale leaves a 112-px image's closeness ≥ 0.89 wherever the points
are. ``distance_scale`` is 1000·√2, the diagonal of the 0-1000 frame; the ``max(0, ·)`` only
bites on coordinates outside the frame (PR1 would go negative there). ``matching='sequential'``
is the paper's "w/o reward matching" ablation.

``kind='exact_count'`` is R1-V's binary accuracy reward instead (a variant, not Perception-R1's):
``total = format * [n_p == n_g]``, with the same gate (so an empty set never scores).

Target: ``{"points": [[x, y], ...], "frame": [W, H]}`` in the policy's coordinates; ``frame``
defaults to ``[1000, 1000]``. Range: [0, 1]. Components: ``format``, ``count_ratio``,
``closeness``, ``exact_count`` (gated n_p == n_g, whatever ``kind``) and ``total``.
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
      kind: ``'pr1'`` (count ratio × closeness, Perception-R1) or ``'exact_count'`` (R1-V's
        binary reward, a variant).
      distance_scale: L2 normaliser (the 0-1000 frame's diagonal).
      matching: ``'hungarian'`` (PR1) or ``'sequential'`` (index order, ablation).
      max_boxes: at most this many spans per completion are matched (all are counted).
      max_abs_coordinate: larger coordinate magnitudes invalidate a span.
    """

    kind: str = "pr1"
    distance_scale: float = 1000.0 * math.sqrt(2.0)
    matching: str = "hungarian"
    max_boxes: int = 512
    max_abs_coordinate: float = 1e6

    def value_range(self) -> tuple[float, float]:
        return 0.0, 1.0


KINDS = ("pr1", "exact_count")
NORMALIZED_FRAME = 1000.0  # the per-axis extent distances are measured in (Qwen2-VL's frame)


@jax.jit
def distance_matrix(pred_boxes: jax.Array, gt_points: jax.Array, scale: jax.Array) -> jax.Array:
    """``[B, N, M]`` L2 distances between predicted box centres and ground-truth points, after
    multiplying x and y by ``scale`` ``[B, 2]`` (1000/W, 1000/H: the 0-1000 frame)."""
    scale = scale[:, None, :]
    return boxes.l2(*boxes.pairs(boxes.centers(pred_boxes) * scale, gt_points * scale))


@functools.partial(jax.jit, static_argnames="config")
def counting_terms(
    pred_boxes: jax.Array,
    num_pred: jax.Array,
    gt_points: jax.Array,
    num_gt: jax.Array,
    scale: jax.Array,
    assignment: jax.Array,
    fmt: jax.Array,
    config: CountingConfig,
) -> dict[str, jax.Array]:
    """Array part of the reward, given the host-side ``assignment`` (bool ``[B, N, M]``) and
    the per-row axis ``scale`` ``[B, 2]``.

    Returns:
      ``format``, ``count_ratio``, ``closeness`` (the ``max(0, 1 - d/scale)`` factor),
      ``exact_count`` and ``total``, each ``[B]``.
    """
    dist = distance_matrix(pred_boxes, gt_points, scale)
    matched = assignment.sum((1, 2))
    mean_dist = boxes.safe_div(jnp.where(assignment, dist, 0).sum((1, 2)), matched)
    closeness = jnp.maximum(0.0, 1.0 - mean_dist / config.distance_scale)
    num_pred, num_gt = num_pred.astype(jnp.float32), num_gt.astype(jnp.float32)
    ratio = boxes.safe_div(jnp.minimum(num_pred, num_gt), jnp.maximum(num_pred, num_gt))
    gate = fmt * ((num_pred > 0) & (num_gt > 0))
    exact = gate * (num_pred == num_gt)
    return {
        "format": fmt,
        "count_ratio": ratio,
        "closeness": closeness,
        "exact_count": exact,
        "total": exact if config.kind == "exact_count" else gate * ratio * closeness,
    }


def frame_scale(targets: Sequence[Mapping], group_size: int, rows: int) -> np.ndarray:
    """``[rows, 2]`` float32 (1000/W, 1000/H) of each row's target ``frame`` (default 1000²).

    Raises:
      ValueError: a frame that is not two positive finite numbers.
    """
    scale = np.ones((rows // group_size, 2), np.float64)
    for i, target in enumerate(targets):
        frame = np.asarray(target.get("frame", (NORMALIZED_FRAME,) * 2), np.float64)
        if frame.shape != (2,) or not (np.isfinite(frame).all() and (frame > 0).all()):
            raise ValueError(f"targets[{i}]['frame'] must be [W, H] > 0, got {frame.tolist()}")
        scale[i] = NORMALIZED_FRAME / frame
    return np.repeat(scale, group_size, axis=0).astype(np.float32)


def counting(
    completions: Sequence[str],
    targets: Sequence[Mapping],
    *,
    group_size: int,
    rows: int,
    config: CountingConfig,
) -> dict[str, np.ndarray]:
    """Counting reward components over ``rows`` padded completions (see module doc)."""
    if config.kind not in KINDS:
        raise ValueError(f"unknown counting reward kind {config.kind!r}; expected one of {KINDS}")
    pred = parse.qwen2_boxes(
        completions, rows=rows, max_boxes=config.max_boxes, max_abs=config.max_abs_coordinate
    )
    gt, gt_valid = layout.per_completion(
        layout.target_rows(targets, "points", 2), group_size, rows, width=2
    )
    scale = frame_scale(targets, group_size, rows)
    num_rows, num_gt = pred.valid.sum(1), gt_valid.sum(1)
    if config.matching == "hungarian":
        cost = np.asarray(distance_matrix(pred.boxes, gt, scale))
        assignment = matching.hungarian(cost, num_rows, num_gt)
    elif config.matching == "sequential":
        assignment = matching.sequential(pred.valid.shape + gt_valid.shape[1:], num_rows, num_gt)
    else:
        raise ValueError(f"unknown counting matching {config.matching!r}")
    fmt = parse.counting_format(completions, rows=rows)
    terms = counting_terms(pred.boxes, pred.num_valid, gt, num_gt, scale, assignment, fmt, config)
    return {k: np.asarray(v) for k, v in terms.items()}
