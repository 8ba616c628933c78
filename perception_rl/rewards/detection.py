"""Object detection reward, Perception-R1's ``pr1_detection`` (seed_spec A7, DESIGN §3).

The completion is a Qwen2.5-VL JSON list ``[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]``
(pixels, code fences tolerated). An element is valid when its box is four finite, ordered
numbers and its label is in ``vocabulary``. With ``fmt`` the valid fraction of elements,
predictions matched to ground truth by DETR's cost
``cost_l1·L1(cxcywh) − cost_class·softmax(one-hot)[gt class] − cost_giou·GIoU`` (Hungarian),
and the M matched pairs with IoU > ``match_iou`` kept:

    r = format_weight·fmt                                  (0 if nothing valid parsed)
    if N_gt > 0 and M > 0:
        r += f1_weight·F1 + class_weight·class_acc + iou_weight·mean_IoU
        r −= penalty_weight·((N_pred − M)/N_pred + (N_gt − M)/N_gt)   (if missing_penalty)
    total = clip(r, clip_min, clip_max)

PR1's known bugs are fixed, not reproduced: "toothbrush" (the last COCO class) is an ordinary
label, the class cost compares like with like, and an inverted box invalidates only its own
element. Predictions beyond ``max_predictions`` count in N_pred but are not matched.
Target: ``{"boxes": [[x1, y1, x2, y2], ...], "labels": [str, ...]}``. Range: [0, 3].
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

# fmt: off
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # the 80 COCO category names in standard (category-id) order
# fmt: on


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
    """Constants of the detection reward (defaults: PR1's, missing penalty on).

    Attributes:
      vocabulary: accepted label strings; a prediction with another label is invalid.
      format_weight, f1_weight, class_weight, iou_weight: term weights.
      missing_penalty: subtract the false-positive + false-negative rate term.
      penalty_weight: its weight.
      match_iou: matched pairs need IoU strictly above this.
      cost_l1, cost_class, cost_giou: DETR matching-cost weights (L1 in absolute pixels).
      box_eps: added to IoU / GIoU denominators, as PR1's box ops do.
      f1_eps: added to P + R in F1.
      clip_min, clip_max: the total is clipped to this interval.
      max_predictions: at most this many valid predictions per completion are matched.
      max_abs_coordinate: larger coordinate magnitudes make an element invalid.
    """

    vocabulary: tuple[str, ...] = COCO_CLASSES
    format_weight: float = 0.25
    f1_weight: float = 0.75
    class_weight: float = 1.0
    iou_weight: float = 1.0
    missing_penalty: bool = True
    penalty_weight: float = 0.5
    match_iou: float = 0.5
    cost_l1: float = 5.0
    cost_class: float = 1.0
    cost_giou: float = 2.0
    box_eps: float = 1e-8
    f1_eps: float = 1e-8
    clip_min: float = 0.0
    clip_max: float = 3.0
    max_predictions: int = 512
    max_abs_coordinate: float = 1e6

    def value_range(self) -> tuple[float, float]:
        return self.clip_min, self.clip_max


@functools.partial(jax.jit, static_argnames="config")
def matching_cost(
    pred: parse.BoxSet, gt: jax.Array, gt_labels: jax.Array, config: DetectionConfig
) -> jax.Array:
    """DETR matching cost ``[B, N, M]`` between padded predictions and ground truth."""
    p, g = boxes.pairs(pred.boxes, gt)
    # softmax of a one-hot logit row over K classes: e/(e+K-1) at the hot class, 1/(e+K-1) else.
    denominator = math.e + len(config.vocabulary) - 1
    same = pred.labels[:, :, None] == gt_labels[:, None, :]
    class_prob = jnp.where(same, math.e / denominator, 1.0 / denominator)
    return (
        config.cost_l1 * boxes.l1(boxes.to_cxcywh(p), boxes.to_cxcywh(g))
        - config.cost_class * class_prob
        - config.cost_giou * boxes.giou(p, g, config.box_eps)
    )


@functools.partial(jax.jit, static_argnames="config")
def detection_terms(
    pred: parse.BoxSet,
    gt: jax.Array,
    gt_labels: jax.Array,
    assignment: jax.Array,
    config: DetectionConfig,
) -> dict[str, jax.Array]:
    """Array part of the reward, given the host-side ``assignment`` (bool ``[B, N, M]``).

    Returns:
      Unweighted terms ``format`` (valid fraction), ``f1``, ``class_accuracy``, ``mean_iou``,
      ``missing`` (FP + FN rates) — zero where not applied — and the clipped ``total``, ``[B]``.
    """
    num_pred = pred.num_valid.astype(jnp.float32)
    num_gt = (gt_labels >= 0).sum(1).astype(jnp.float32)
    fmt = jnp.where(num_pred > 0, num_pred / jnp.maximum(pred.num_elements, 1), 0.0)
    iou = boxes.iou(*boxes.pairs(pred.boxes, gt), config.box_eps)
    kept = assignment & (iou > config.match_iou)
    m = kept.sum((1, 2)).astype(jnp.float32)
    scored = m > 0  # PR1 returns the format term alone when nothing matched
    precision, recall = boxes.safe_div(m, num_pred), boxes.safe_div(m, num_gt)
    f1 = 2 * precision * recall / (precision + recall + config.f1_eps)
    same = pred.labels[:, :, None] == gt_labels[:, None, :]
    class_acc = boxes.safe_div((kept & same).sum((1, 2)), m)
    mean_iou = boxes.safe_div(jnp.where(kept, iou, 0).sum((1, 2)), m)
    missing = boxes.safe_div(num_pred - m, num_pred) + boxes.safe_div(num_gt - m, num_gt)
    missing = jnp.where(scored & config.missing_penalty, missing, 0.0)
    f1, class_acc, mean_iou = (jnp.where(scored, x, 0.0) for x in (f1, class_acc, mean_iou))
    reward = (
        config.format_weight * fmt
        + config.f1_weight * f1
        + config.class_weight * class_acc
        + config.iou_weight * mean_iou
        - config.penalty_weight * missing
    )
    return {
        "format": fmt,
        "f1": f1,
        "class_accuracy": class_acc,
        "mean_iou": mean_iou,
        "missing": missing,
        "total": jnp.clip(reward, config.clip_min, config.clip_max),
    }


def ground_truth(targets: Sequence[Mapping], config: DetectionConfig) -> tuple[list, list]:
    """Per-prompt ``[M_i, 4]`` boxes and ``[M_i, 1]`` vocabulary indices.

    Raises:
      ValueError: on a label outside the vocabulary or a boxes / labels length mismatch.
    """
    index = {name: i for i, name in enumerate(config.vocabulary)}
    gt_boxes = layout.target_rows(targets, "boxes", 4)
    gt_labels = []
    for i, (target, b) in enumerate(zip(targets, gt_boxes)):
        labels = list(target["labels"])
        if len(labels) != len(b) or not set(labels) <= index.keys():
            raise ValueError(
                f"targets[{i}]: labels must be {len(b)} names from the vocabulary, got {labels!r}"
            )
        gt_labels.append(np.array([index[label] for label in labels], np.float64).reshape(-1, 1))
    return gt_boxes, gt_labels


def detection(
    completions: Sequence[str],
    targets: Sequence[Mapping],
    *,
    group_size: int,
    rows: int,
    config: DetectionConfig,
) -> dict[str, np.ndarray]:
    """Detection reward components over ``rows`` padded completions (see module doc)."""
    vocabulary = {name: i for i, name in enumerate(config.vocabulary)}
    pred = parse.json_boxes(
        completions,
        rows=rows,
        max_boxes=config.max_predictions,
        max_abs=config.max_abs_coordinate,
        vocabulary=vocabulary,
    )
    gt_boxes, gt_labels = ground_truth(targets, config)
    gt, gt_valid = layout.per_completion(gt_boxes, group_size, rows, width=4)
    labels, _ = layout.per_completion(gt_labels, group_size, rows, width=1)
    labels = np.where(gt_valid, labels[..., 0], -1).astype(np.int32)  # -1 marks padding
    cost = np.asarray(matching_cost(pred, gt, labels, config))
    assignment = matching.hungarian(cost, pred.valid.sum(1), gt_valid.sum(1))
    terms = detection_terms(pred, gt, labels, assignment, config)
    return {k: np.asarray(v) for k, v in terms.items()}
