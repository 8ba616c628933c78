"""DIP-R1 rewards for crowded-scene detection: a RECONSTRUCTION (seed_spec B3, DESIGN §3).

The DIP-R1 paper body was not available; only its abstract names the three rewards. What is
implemented here is the project's documented reconstruction, every constant configurable:

* format ∈ {0, 1}: after trailing end tokens are stripped, the completion is exactly
  ``<think>…</think> <look>[…]</look> <answer>[…]</answer>`` (whitespace between blocks, each
  tag once) and the look and answer blocks are JSON ``bbox_2d`` lists whose boxes are all valid.
* look ∈ [0, 1] (variance-guided): for each ground-truth instance j, the hit indicator
  h_ij = 1[some answer box of rollout i has IoU >= match_iou with j] varies over the group's G
  rollouts with variance u_j = p_j(1 − p_j). Instances with u_j > min_variance are uncertain;
  look_i = Σ_j u_j·c_ij / Σ_j u_j over them, where c_ij = 1[one of rollout i's first
  max_look_boxes valid look boxes has IoU >= look_iou with j]; 0 when no instance is uncertain.
* accuracy ∈ [0, precision_weight + recall_weight]: M = size of a maximum one-to-one matching
  between answer boxes and ground truth over pairs with IoU >= match_iou; P = M / N_pred and
  R = M / N_gt, where answer boxes that hit no instance but lie in an ``ignore`` region
  (intersection over their area >= ignore_ioa) are dropped from N_pred. An empty set on one
  side gives P = R = 0, on both sides P = R = 1; an answer block that is missing or not a JSON
  list gives 0.

    total = format_weight·format + look_weight·look + accuracy_weight·(w_p·P + w_r·R)

Target: ``{"boxes": [[x1, y1, x2, y2], ...], "ignore": [[...], ...] (optional)}`` in the policy's
coordinates (pixels for Qwen2.5-VL). Range: [0, 3] by default.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from perception_rl.rewards import boxes, layout, matching, parse

TAGS = ("think", "look", "answer")


@dataclasses.dataclass(frozen=True)
class DipConfig:
    """Constants of the reconstructed DIP-R1 reward.

    Attributes:
      format_weight, look_weight, accuracy_weight: weights of the three rewards.
      precision_weight, recall_weight: accuracy = w_p·P + w_r·R (recall favoured in crowds).
      match_iou: IoU for a hit and for a matchable answer / ground-truth pair.
      look_iou: IoU for a look box to cover an instance.
      min_variance: instances with hit variance above this are uncertain (max variance 0.25).
      ignore_ioa: an unmatched answer box this much inside an ignore region is not counted.
      max_look_boxes: only the first valid look boxes count, so covering everything cannot pay.
      max_boxes: at most this many answer boxes per completion are matched (all are counted).
      max_abs_coordinate: larger coordinate magnitudes make a box invalid.
    """

    format_weight: float = 1.0
    look_weight: float = 1.0
    accuracy_weight: float = 1.0
    precision_weight: float = 0.4
    recall_weight: float = 0.6
    match_iou: float = 0.5
    look_iou: float = 0.5
    min_variance: float = 0.0
    ignore_ioa: float = 0.5
    max_look_boxes: int = 8
    max_boxes: int = 512
    max_abs_coordinate: float = 1e6

    def value_range(self) -> tuple[float, float]:
        accuracy = self.accuracy_weight * (self.precision_weight + self.recall_weight)
        return 0.0, self.format_weight + self.look_weight + accuracy


@functools.partial(jax.jit, static_argnames="match_iou")
def hit_matrix(
    answer: jax.Array, answer_valid: jax.Array, gt: jax.Array, gt_valid: jax.Array, match_iou: float
) -> jax.Array:
    """bool ``[B, N, M]``: answer box n and instance m overlap with IoU >= match_iou."""
    hit = boxes.iou(*boxes.pairs(answer, gt)) >= match_iou
    return hit & answer_valid[:, :, None] & gt_valid[:, None, :]


@functools.partial(jax.jit, static_argnames=("group_size", "config"))
def dip_terms(
    answer: parse.BoxSet,
    look: parse.BoxSet,
    gt: jax.Array,
    gt_valid: jax.Array,
    ignore: jax.Array,
    ignore_valid: jax.Array,
    matched: jax.Array,
    fmt: jax.Array,
    group_size: int,
    config: DipConfig,
) -> dict[str, jax.Array]:
    """Array part of the reward, given the host-side maximum matching ``matched`` ``[B, N, M]``.

    Rows are prompt-major, so ``[B] -> [B / G, G]`` regroups the rollouts of each prompt.

    Returns:
      ``format``, ``look``, ``precision``, ``recall``, ``accuracy`` and ``total``, each ``[B]``.
    """
    hits = hit_matrix(answer.boxes, answer.valid, gt, gt_valid, config.match_iou)
    # Variance over the group of each instance's hit indicator.
    found = hits.any(1).astype(jnp.float32).reshape(-1, group_size, gt.shape[1])
    rate = found.mean(1, keepdims=True)
    variance = jnp.broadcast_to(rate * (1 - rate), found.shape).reshape(gt_valid.shape)
    weight = jnp.where(gt_valid & (variance > config.min_variance), variance, 0.0)
    covered = hit_matrix(look.boxes, look.valid, gt, gt_valid, config.look_iou).any(1)
    look_reward = boxes.safe_div((weight * covered).sum(1), weight.sum(1))

    inside = boxes.ioa(*boxes.pairs(answer.boxes, ignore)) >= config.ignore_ioa
    dropped = answer.valid & ~hits.any(2) & (inside & ignore_valid[:, None, :]).any(2)
    num_pred = (answer.num_valid - dropped.sum(1)).astype(jnp.float32)
    num_gt = gt_valid.sum(1).astype(jnp.float32)
    m = matched.sum((1, 2)).astype(jnp.float32)
    both_empty = (num_pred == 0) & (num_gt == 0)
    precision = jnp.where(both_empty, 1.0, boxes.safe_div(m, num_pred)) * answer.parsed
    recall = jnp.where(both_empty, 1.0, boxes.safe_div(m, num_gt)) * answer.parsed
    accuracy = config.precision_weight * precision + config.recall_weight * recall
    total = (
        config.format_weight * fmt
        + config.look_weight * look_reward
        + config.accuracy_weight * accuracy
    )
    return {
        "format": fmt,
        "look": look_reward,
        "precision": precision,
        "recall": recall,
        "accuracy": accuracy,
        "total": total,
    }


def dip(
    completions: Sequence[str],
    targets: Sequence[Mapping],
    *,
    group_size: int,
    rows: int,
    config: DipConfig,
) -> dict[str, np.ndarray]:
    """DIP-R1 reward components over ``rows`` padded completions (see module doc)."""
    blocks = parse.tagged_blocks(completions, TAGS, rows=rows)
    sets = {
        tag: parse.json_boxes(
            blocks.contents[tag], rows=rows, max_boxes=cap, max_abs=config.max_abs_coordinate
        )
        for tag, cap in (("answer", config.max_boxes), ("look", config.max_look_boxes))
    }
    fmt = blocks.strict.copy()
    for s in sets.values():
        fmt &= s.parsed & (s.num_valid == s.num_elements)
    gt, gt_valid = layout.per_completion(
        layout.target_rows(targets, "boxes", 4), group_size, rows, width=4
    )
    ignore, ignore_valid = layout.per_completion(
        layout.target_rows(targets, "ignore", 4, required=False), group_size, rows, width=4
    )
    answer = sets["answer"]
    hits = hit_matrix(answer.boxes, answer.valid, gt, gt_valid, config.match_iou)
    matched = matching.maximum_matching(np.asarray(hits), answer.valid.sum(1), gt_valid.sum(1))
    terms = dip_terms(
        answer,
        sets["look"],
        gt,
        gt_valid,
        ignore,
        ignore_valid,
        matched,
        fmt.astype(np.float32),
        group_size,
        config,
    )
    return {k: np.asarray(v) for k, v in terms.items()}
