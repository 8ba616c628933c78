"""Referring-expression grounding accuracy (RefCOCO / RefCOCO+ / RefCOCOg).

One sample is one referring expression with one predicted and one ground-truth box, both
`[x1, y1, x2, y2]` in original-image pixels. Perception-R1's grounding script reports Acc@τ for
τ in {0.1, 0.3, 0.5, 0.75, 0.95}, the centre accuracy and the mean IoU; its paper's "Avg" is the
arithmetic mean of Acc@0.5, Acc@0.75 and Acc@0.95 (datasets.md §2, seed_spec.md A4).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

THRESHOLDS = (0.1, 0.3, 0.5, 0.75, 0.95)  # PR1's eval script
AVERAGED = (0.5, 0.75, 0.95)  # the paper's "Avg"
_IOU_EPS = 1e-10  # Perception-R1's eval adds this to the union; its reward does not.


def box_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Elementwise IoU of xyxy boxes, as Perception-R1's grounding eval computes it.

    Continuous coordinates (no +1 pixel), `inter / (union + 1e-10)`. Disjoint, inverted and
    unparsed (non-finite) boxes have IoU 0.

    Args:
      pred: [..., 4] predicted boxes.
      gt: [..., 4] ground-truth boxes, broadcastable against `pred`.

    Returns:
      [...] IoU.
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    width = np.minimum(pred[..., 2], gt[..., 2]) - np.maximum(pred[..., 0], gt[..., 0])
    height = np.minimum(pred[..., 3], gt[..., 3]) - np.maximum(pred[..., 1], gt[..., 1])
    inter = np.maximum(width, 0) * np.maximum(height, 0)
    area_pred = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
    area_gt = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    union = area_pred + area_gt - inter + _IOU_EPS
    # inter > 0 implies both boxes are proper, so the union is positive; NaN compares False.
    return np.divide(inter, union, out=np.zeros(np.shape(inter)), where=inter > 0)


def centre_inside(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Whether each predicted box's centre lies in its ground-truth box (edges included).

    Args:
      pred: [..., 4] predicted xyxy boxes; non-finite rows are never inside.
      gt: [..., 4] ground-truth xyxy boxes.

    Returns:
      [...] bool.
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    cx = (pred[..., 0] + pred[..., 2]) / 2
    cy = (pred[..., 1] + pred[..., 3]) / 2
    return (gt[..., 0] <= cx) & (cx <= gt[..., 2]) & (gt[..., 1] <= cy) & (cy <= gt[..., 3])


def grounding_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    thresholds: Sequence[float] = THRESHOLDS,
    averaged: Sequence[float] = AVERAGED,
) -> dict[str, float]:
    """Accuracy at IoU thresholds, the paper's Avg, centre accuracy and mean IoU.

    Args:
      pred: [N, 4] predicted xyxy boxes in original-image pixels; a row of NaN marks an
        expression whose output did not parse (always wrong).
      gt: [N, 4] ground-truth xyxy boxes.
      thresholds: IoU thresholds τ; an expression is correct at τ when IoU ≥ τ.
      averaged: the thresholds whose accuracies `acc_mean` averages (those of `thresholds`).

    Returns:
      `acc@τ` for each τ (keys formatted like `acc@0.5`), `acc_mean` (the arithmetic mean of
      the `averaged` accuracies: the paper's "Avg"), `centre_acc` and `mean_iou`; fractions in
      [0, 1].
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.ndim != 2 or pred.shape[-1] != 4 or pred.shape != gt.shape or not len(pred):
        raise ValueError(
            f"pred and gt must both be [N, 4] with N > 0, got {pred.shape} and {gt.shape}."
        )
    iou = box_iou(pred, gt)
    accuracy = {f"acc@{t:g}": float(np.mean(iou >= t)) for t in thresholds}
    in_average = [accuracy[f"acc@{t:g}"] for t in averaged if f"acc@{t:g}" in accuracy]
    return {
        **accuracy,
        "acc_mean": float(np.mean(in_average)) if in_average else float("nan"),
        "centre_acc": float(np.mean(centre_inside(pred, gt))),
        "mean_iou": float(np.mean(iou)),
    }
