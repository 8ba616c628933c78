"""Counting accuracy (PixMo-Count, counted by detecting: seed_spec.md A5, data_eval.md §2.2).

The predicted count is the number of boxes parsed from the output. Perception-R1 maps zero
boxes to "None", which never equals a count, so an empty output is wrong even when the
ground-truth count is 0.
"""

from __future__ import annotations

import numpy as np


def count_correct(num_pred_boxes: np.ndarray, gt_counts: np.ndarray) -> np.ndarray:
    """Per-sample exact-match correctness of a detect-then-count prediction.

    Args:
      num_pred_boxes: [N] number of boxes parsed from each output (0: nothing parsed).
      gt_counts: [N] ground-truth counts.

    Returns:
      [N] bool: a non-empty prediction with exactly the ground-truth count.
    """
    num_pred_boxes, gt_counts = _counts(num_pred_boxes), _counts(gt_counts)
    if num_pred_boxes.shape != gt_counts.shape:
        raise ValueError(
            f"num_pred_boxes {num_pred_boxes.shape} and gt_counts "
            f"{gt_counts.shape} must have the same shape."
        )
    return (num_pred_boxes > 0) & (num_pred_boxes == gt_counts)


def counting_metrics(num_pred_boxes: np.ndarray, gt_counts: np.ndarray) -> dict[str, float]:
    """Exact-match counting accuracy over samples.

    Args:
      num_pred_boxes: [N] number of boxes parsed from each output (0: nothing parsed).
      gt_counts: [N] ground-truth counts, N > 0.

    Returns:
      `{"accuracy": fraction of samples counted exactly}`.
    """
    correct = count_correct(num_pred_boxes, gt_counts)
    if not correct.size:
        raise ValueError("counting_metrics needs at least one sample.")
    return {"accuracy": float(np.mean(correct))}


def _counts(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or not (np.issubdtype(values.dtype, np.integer) or values.size == 0):
        raise ValueError(f"counts must be a 1-D integer array, got {values.dtype} {values.shape}.")
    if np.any(values < 0):
        raise ValueError("counts must be >= 0.")
    return values
