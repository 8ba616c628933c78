"""Crowd / pedestrian detection metrics with ignore regions (CrowdHuman, CityPersons, DIP-R1).

Definitions (data_eval.md §2.5), all at one IoU threshold `iou` (0.5 in every benchmark) and
class-agnostic; ground truth with `iscrowd=1` is an ignore region:

- Matching for AP, MR⁻², recall, precision and F1 is Caltech's greedy one: detections in
  descending score order (ties: ground-truth image order, then output order) each take the
  unmatched ground truth of highest IoU ≥ `iou`; failing that, a detection whose
  intersection-over-its-own-area (IoA) with an ignore region is ≥ `iou` is dropped, otherwise it
  is a false positive.
- AP50: CrowdDet's `eval_AP`, the trapezoid rule over the ranked (recall, precision) points,
  starting at the first detection (no point at recall 0).
- MR⁻²: the CityPersons / Dollár log-average miss rate, the geometric mean of the miss rate
  sampled at 9 FPPI points log-spaced in [1e-2, 1] (the lowest miss rate with FPPI ≤ each
  point; with no detection kept the miss rate is 1). FPPI divides by every ground-truth image.
- JI: CrowdDet's `compute_JI`. Per score threshold in {0.0, 0.1, ..., 0.9} (detections with
  score > threshold), each image is matched one-to-one by maximum total IoU over pairs with
  IoU ≥ `iou`, giving k pairs; unmatched detections and unmatched ground truth whose IoA with
  an ignore region is ≥ `iou` are not counted, leaving n detections and m ground truth.
  JI = mean over images with m + n > 0 of k / (m + n − k); the reported JI is the maximum
  over thresholds. It needs no ranking, so it is the most telling number for score-less LLMs.

Thresholds compare with ≥ as pycocotools and CityPersons do (CrowdDet uses >); this differs
only for overlaps of exactly `iou`. Boxes are not clipped to the image.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from perception_rl.eval.metrics import records

FPPI_POINTS = np.logspace(-2.0, 0.0, 9)  # CityPersons' reference false positives per image.
JI_SCORE_THRESHOLDS = np.arange(10) * 0.1  # CrowdDet's `1e-1 * i`, bit for bit.


@dataclasses.dataclass(frozen=True)
class _Image:
    gt: np.ndarray  # [G, 4] xyxy ground truth that must be found.
    ignore: np.ndarray  # [R, 4] xyxy ignore regions.
    boxes: np.ndarray  # [D, 4] xyxy detections, in output order.
    scores: np.ndarray  # [D]


def crowd_metrics(gt: Any, detections: Any, iou: float = 0.5) -> dict[str, float]:
    """AP50, MR⁻², JI, recall, precision and F1 of crowd detections (definitions: module doc).

    Args:
      gt: COCO-format dict: `images` (integer `id`s; every one is evaluated) and `annotations`
        (`image_id`, `bbox` `[x, y, w, h]` in pixels, `iscrowd=1` for ignore regions).
        Categories are not read.
      detections: list of `{"image_id", "bbox": [x, y, w, h], "score"?}`; `score` defaults to 1.0,
        which makes AP50 and MR⁻² single-operating-point numbers.
      iou: IoU (and IoA) threshold in (0, 1].

    Returns:
      `AP50`, `MR-2` (lower is better), `JI`, `recall`, `precision` and `F1`, in [0, 1]; NaN where
      undefined (recall, AP50 and MR-2 without ground truth, precision without detections).

    Raises:
      RecordError: naming the first malformed ground-truth record or detection.
    """
    if not 0 < iou <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou}.")
    truth = records.load_ground_truth(gt, with_categories=False)
    found = records.load_detections(detections, truth, with_categories=False)
    images = _split_by_image(truth, found)
    num_gt = sum(len(image.gt) for image in images)
    is_tp = _ranked_matches(images, iou)
    tp, fp = np.cumsum(is_tp), np.cumsum(~is_tp)
    hits = int(is_tp.sum())
    false_alarms, misses = len(is_tp) - hits, num_gt - hits
    return {
        "AP50": _average_precision(tp / num_gt, tp / (tp + fp)) if num_gt else np.nan,
        "MR-2": _log_average_miss_rate(tp / num_gt, fp / len(images)) if num_gt else np.nan,
        "JI": _jaccard_index(images, iou),
        "recall": hits / num_gt if num_gt else np.nan,
        "precision": hits / len(is_tp) if len(is_tp) else np.nan,
        "F1": (
            2 * hits / (2 * hits + false_alarms + misses)  # = 2PR / (P + R), 0 if either is
            if hits + false_alarms + misses
            else np.nan
        ),  # undefined and the other 0.
    }


def _split_by_image(truth: records.GroundTruth, found: records.Detections) -> list[_Image]:
    """Per-image xyxy arrays, in the order of `gt['images']`."""
    num_images = len(truth.image_ids)
    gt_boxes, gt_crowd = _group(
        _image_index(truth, truth.image_id), num_images, _xyxy(truth.boxes), truth.iscrowd
    )
    det_boxes, det_scores = _group(
        _image_index(truth, found.image_id), num_images, _xyxy(found.boxes), found.scores
    )
    return [
        _Image(gt=boxes[~crowd], ignore=boxes[crowd], boxes=dets, scores=scores)
        for boxes, crowd, dets, scores in zip(gt_boxes, gt_crowd, det_boxes, det_scores)
    ]


def _image_index(truth: records.GroundTruth, image_ids: np.ndarray) -> np.ndarray:
    """Position of each (known) image id in `truth.image_ids`."""
    order = np.argsort(truth.image_ids)
    return order[np.searchsorted(truth.image_ids[order], image_ids)]


def _group(index: np.ndarray, size: int, *arrays: np.ndarray) -> list[list[np.ndarray]]:
    """Splits each array into `size` groups by `index`, keeping the order within a group."""
    order = np.argsort(index, kind="stable")
    bounds = np.cumsum(np.bincount(index, minlength=size))[:-1]
    return [np.split(array[order], bounds) for array in arrays]


def _ranked_matches(images: list[_Image], iou: float) -> np.ndarray:
    """Whether each non-ignored detection is a true positive, in global ranking order."""
    statuses, scores = [], []
    for image in images:
        order = np.argsort(-image.scores, kind="stable")
        statuses.append(_caltech_match(image.boxes[order], image.gt, image.ignore, iou))
        scores.append(image.scores[order])
    status, score = np.concatenate(statuses), np.concatenate(scores)
    kept = status >= 0
    return status[kept][np.argsort(-score[kept], kind="stable")] == 1


def _caltech_match(boxes: np.ndarray, gt: np.ndarray, ignore: np.ndarray, iou: float) -> np.ndarray:
    """Greedy matching of score-sorted detections: 1 true positive, 0 false, -1 ignored."""
    overlaps = _iou(boxes, gt)
    status = np.where(_covered(boxes, ignore, iou), -1, 0).astype(np.int8)
    free = np.ones(len(gt), bool)
    for d in np.flatnonzero((overlaps >= iou).any(axis=1)):  # Sequential: a match takes a GT.
        candidates = np.where(free, overlaps[d], -1.0)
        best = int(np.argmax(candidates))
        if candidates[best] >= iou:
            status[d], free[best] = 1, False
    return status


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """CrowdDet's trapezoid area under the ranked precision-recall points."""
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))


def _log_average_miss_rate(recall: np.ndarray, fppi: np.ndarray) -> float:
    """Geometric mean of the miss rate at `FPPI_POINTS`."""
    # Prepend the operating point that keeps no detection: FPPI 0, miss rate 1.
    fppi, miss = np.append(0.0, fppi), 1.0 - np.append(0.0, recall)
    sampled = miss[np.searchsorted(fppi, FPPI_POINTS, side="right") - 1]
    with np.errstate(divide="ignore"):  # A miss rate of 0 makes the mean 0, as it should.
        return float(np.exp(np.mean(np.log(sampled))))


def _jaccard_index(images: list[_Image], iou: float) -> float:
    """Maximum over score thresholds of the mean per-image k / (m + n − k)."""
    overlaps = [_iou(image.boxes, image.gt) for image in images]
    det_ignored = [_covered(image.boxes, image.ignore, iou) for image in images]
    gt_ignored = [_covered(image.gt, image.ignore, iou) for image in images]
    counts = np.zeros((len(images), 3))  # k, m, n per image
    num_kept = np.full(len(images), -1)
    best = np.nan
    for threshold in JI_SCORE_THRESHOLDS:
        for i, image in enumerate(images):
            keep = image.scores > threshold
            if keep.sum() != num_kept[i]:  # Kept sets are nested: same size, same detections.
                num_kept[i] = keep.sum()
                counts[i] = _ji_counts(overlaps[i][keep], det_ignored[i][keep], gt_ignored[i], iou)
        k, m, n = counts.T
        counted = (m > 0) | (n > 0)
        if counted.any():
            best = np.fmax(best, np.mean(k[counted] / (m + n - k)[counted]))
    return float(best)


def _ji_counts(
    overlaps: np.ndarray, det_ignored: np.ndarray, gt_ignored: np.ndarray, iou: float
) -> tuple[int, int, int]:
    """(k matched pairs, m counted ground truth, n counted detections) of one image.

    Args:
      overlaps: [D, G] IoU of the kept detections with the ground truth.
      det_ignored: [D] whether each detection lies in an ignore region.
      gt_ignored: [G] whether each ground truth lies in an ignore region.
      iou: matching threshold.
    """
    from scipy.optimize import linear_sum_assignment  # Heavy import: only when evaluating.

    weights = np.where(overlaps >= iou, overlaps, 0.0)
    rows, cols = linear_sum_assignment(weights, maximize=True)  # Max-weight matching.
    matched = weights[rows, cols] > 0
    det_free, gt_free = np.ones(len(det_ignored), bool), np.ones(len(gt_ignored), bool)
    det_free[rows[matched]], gt_free[cols[matched]] = False, False
    return (
        int(matched.sum()),
        len(gt_ignored) - int(np.sum(gt_free & gt_ignored)),
        len(det_ignored) - int(np.sum(det_free & det_ignored)),
    )


def _xyxy(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[A, B] intersection areas of xyxy boxes."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return np.prod(np.clip(high - low, 0, None), axis=-1)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _covered(boxes: np.ndarray, regions: np.ndarray, iou: float) -> np.ndarray:
    """[A] whether each box lies in some region: intersection / own area ≥ `iou`."""
    inter = _intersection(boxes, regions)
    area = np.broadcast_to(_area(boxes)[:, None], inter.shape)
    ioa = np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)
    return (ioa >= iou).any(axis=1)
