"""Crowd / pedestrian detection metrics with ignore regions (CrowdHuman, CityPersons, DIP-R1).

Class-agnostic, at one IoU threshold `iou` (0.5 in every benchmark); ground truth with
`iscrowd=1` is an ignore region. Three protocols differ only in conventions (`PROTOCOLS`):

- `crowdhuman`: CrowdHuman's official evaluation (CrowdDet's `APMRToolkits` and `compute_JI`).
  Detections and ground truth are clipped to the image (x1 to [0, W−1], x2 to [0, W], y alike);
  overlaps are `inter / (union + 1e-6)` and `inter / (own area + 1e-6)` and must be
  *strictly* greater than `iou`; the miss rate at an FPPI point is read at the first ranked
  detection whose FPPI reaches it (the last one when none does).
- `citypersons`: CityPersons' `eval_MR_multisetup.py`, Reasonable setup. Ground truth shorter
  than 50 px or less than 0.65 visible (annotation key `vis_ratio`, default 1) becomes an ignore
  region; detections outside the height range [50 / 1.25, ∞) are dropped and at most 1,000 per
  image (highest scores) are kept; no clipping; overlaps without epsilon, compared with ≥; the
  miss rate at an FPPI point is read at the last ranked detection with FPPI ≤ it.
- `inclusive`: no clipping, overlaps compared with ≥, CityPersons' sampling, no filters. Boxes
  may lie anywhere (the detection task's class-aware F1 shifts each class far apart).

Common definitions (data_eval.md §2.5):

- Matching for AP, MR⁻², recall, precision and F1 is Caltech's greedy one: detections in
  descending score order (ties: ground-truth image order, then output order) each take the
  unmatched ground truth of highest IoU; failing that, a detection whose intersection over its
  own area (IoA) with an ignore region passes the threshold is dropped, else it is a false
  positive.
- AP50: CrowdDet's `eval_AP`, the trapezoid rule over the ranked (recall, precision) points,
  starting at the first detection (no point at recall 0).
- MR⁻²: the geometric mean of the miss rate sampled at 9 FPPI points log-spaced in [1e-2, 1];
  FPPI divides by every ground-truth image. With no detection kept the miss rate is 1 (the
  official CrowdHuman script takes the mean of an empty list, NaN; CityPersons' gives 1).
  CityPersons' script reads the *final* recall when a point lies below the first false
  positive's FPPI (a negative index; only possible with fewer than 100 images): we read the
  miss rate before any detection, 1.
- JI: CrowdDet's `compute_JI`. Per score threshold in {0.0, 0.1, ..., 0.9} (detections with
  score > threshold), each image is matched one-to-one by maximum total IoU over pairs passing
  `iou`, giving k pairs; unmatched detections and unmatched ground truth whose IoA with an
  ignore region passes `iou` are not counted, leaving n detections and m ground truth.
  JI = Σ_images k / (m + n − k + ε) / #images with m + n > 0, ε = 1e-6 for `crowdhuman` (as
  CrowdDet) and 0 otherwise; the reported JI is the maximum over thresholds. It needs no
  ranking, so it is the most telling number for score-less LLMs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from perception_rl.metrics import records

FPPI_POINTS = np.array([0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000])
JI_SCORE_THRESHOLDS = np.arange(10) * 0.1  # CrowdDet's `1e-1 * i`, bit for bit.


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The conventions in which the crowd benchmarks' official scripts differ.

    Attributes:
      clip: clip detections and ground truth to the image (needs image width and height).
      strict: overlaps must exceed the threshold (`>`) instead of reaching it (`>=`).
      eps: added to the denominators of IoU, IoA and the per-image JI.
      fppi_sampling: "first_reaching" (CrowdHuman: the first detection whose FPPI ≥ a point)
        or "last_within" (CityPersons: the last detection whose FPPI ≤ a point).
      min_height / min_visibility: ground truth below either becomes an ignore region.
      height_margin: detections shorter than `min_height / height_margin` are dropped.
      max_detections: per image, highest scores first (None: all).
    """

    clip: bool
    strict: bool
    eps: float
    fppi_sampling: str
    min_height: float = 0.0
    min_visibility: float = 0.0
    height_margin: float = 1.0
    max_detections: int | None = None


PROTOCOLS = {
    "crowdhuman": Protocol(clip=True, strict=True, eps=1e-6, fppi_sampling="first_reaching"),
    "citypersons": Protocol(
        clip=False,
        strict=False,
        eps=0.0,
        fppi_sampling="last_within",
        min_height=50.0,
        min_visibility=0.65,
        height_margin=1.25,
        max_detections=1000,
    ),
    "inclusive": Protocol(clip=False, strict=False, eps=0.0, fppi_sampling="last_within"),
}


@dataclasses.dataclass(frozen=True)
class _Image:
    gt: np.ndarray  # [G, 4] xyxy ground truth that must be found.
    ignore: np.ndarray  # [R, 4] xyxy ignore regions.
    boxes: np.ndarray  # [D, 4] xyxy detections, in output order.
    scores: np.ndarray  # [D]


def crowd_metrics(
    gt: Any, detections: Any, iou: float = 0.5, protocol: str = "crowdhuman"
) -> dict[str, float]:
    """AP50, MR⁻², JI, recall, precision and F1 of crowd detections (definitions: module doc).

    Args:
      gt: COCO-format dict: `images` (integer `id`s, and `width` / `height` in pixels when the
        protocol clips; every image is evaluated) and `annotations` (`image_id`, `bbox`
        `[x, y, w, h]` in pixels, `iscrowd=1` for ignore regions, optional `vis_ratio`).
        Categories are not read.
      detections: list of `{"image_id", "bbox": [x, y, w, h], "score"?}`; `score` defaults to 1.0,
        which makes AP50 and MR⁻² single-operating-point numbers.
      iou: IoU (and IoA) threshold in (0, 1].
      protocol: a key of `PROTOCOLS`.

    Returns:
      `AP50`, `MR-2` (lower is better), `JI`, `recall`, `precision` and `F1`, in [0, 1]; NaN where
      undefined (recall, AP50 and MR-2 without ground truth, precision without detections).

    Raises:
      RecordError: naming the first malformed ground-truth record or detection, or an image
        without its size under a clipping protocol.
    """
    if not 0 < iou <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou}.")
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; expected one of {sorted(PROTOCOLS)}.")
    rules = PROTOCOLS[protocol]
    truth = records.load_ground_truth(gt, with_categories=False)
    found = records.load_detections(detections, truth, with_categories=False)
    images = _split_by_image(truth, found, _visibility(gt), _image_sizes(gt, rules), rules)
    num_gt = sum(len(image.gt) for image in images)
    is_tp = _ranked_matches(images, iou, rules)
    tp, fp = np.cumsum(is_tp), np.cumsum(~is_tp)
    hits = int(is_tp.sum())
    false_alarms, misses = len(is_tp) - hits, num_gt - hits
    return {
        "AP50": _average_precision(tp / num_gt, tp / (tp + fp)) if num_gt else np.nan,
        "MR-2": (
            _log_average_miss_rate(tp / num_gt, fp / len(images), rules.fppi_sampling)
            if num_gt
            else np.nan
        ),
        "JI": _jaccard_index(images, iou, rules),
        "recall": hits / num_gt if num_gt else np.nan,
        "precision": hits / len(is_tp) if len(is_tp) else np.nan,
        "F1": (
            2 * hits / (2 * hits + false_alarms + misses)  # = 2PR / (P + R), 0 if either is
            if hits + false_alarms + misses
            else np.nan
        ),  # undefined and the other 0.
    }


def _visibility(gt: dict) -> np.ndarray:
    """[A] `vis_ratio` of each annotation (1.0 when absent)."""
    return np.array([float(a.get("vis_ratio", 1.0)) for a in gt["annotations"]], np.float64)


def _image_sizes(gt: dict, rules: Protocol) -> np.ndarray | None:
    """[I, 2] (width, height) of each image when the protocol clips, else None."""
    if not rules.clip:
        return None
    sizes = []
    for i, image in enumerate(gt["images"]):
        width, height = image.get("width"), image.get("height")
        if not all(isinstance(v, (int, float)) and v > 0 for v in (width, height)):
            raise records.RecordError(
                f"gt['images'][{i}] {repr(image)[:200]}: the protocol clips boxes to the image, "
                "so it needs a positive 'width' and 'height'."
            )
        sizes.append((float(width), float(height)))
    return np.array(sizes, np.float64).reshape(-1, 2)


def _split_by_image(
    truth: records.GroundTruth,
    found: records.Detections,
    visibility: np.ndarray,
    sizes: np.ndarray | None,
    rules: Protocol,
) -> list[_Image]:
    """Per-image xyxy arrays, in the order of `gt['images']`, after the protocol's filters."""
    num_images = len(truth.image_ids)
    gt_boxes = _xyxy(truth.boxes)
    height = gt_boxes[:, 3] - gt_boxes[:, 1]  # Before clipping, as CityPersons' `height`.
    outside = (height < rules.min_height) | (visibility < rules.min_visibility)
    gt_grouped, ignore_grouped = _group(
        _image_index(truth, truth.image_id), num_images, gt_boxes, truth.iscrowd | outside
    )
    det_grouped, score_grouped = _group(
        _image_index(truth, found.image_id), num_images, _xyxy(found.boxes), found.scores
    )
    images = []
    for i, (boxes, ignored, dets, scores) in enumerate(
        zip(gt_grouped, ignore_grouped, det_grouped, score_grouped)
    ):
        dets, scores = _kept_detections(dets, scores, rules)
        if sizes is not None:
            boxes, dets = _clip(boxes, *sizes[i]), _clip(dets, *sizes[i])
        images.append(_Image(gt=boxes[~ignored], ignore=boxes[ignored], boxes=dets, scores=scores))
    return images


def _kept_detections(boxes: np.ndarray, scores: np.ndarray, rules: Protocol):
    """CityPersons' per-image cap (highest scores) and height filter; identity otherwise."""
    if rules.max_detections is not None:
        order = np.sort(np.argsort(-scores, kind="stable")[: rules.max_detections])
        boxes, scores = boxes[order], scores[order]
    keep = boxes[:, 3] - boxes[:, 1] >= rules.min_height / rules.height_margin
    return boxes[keep], scores[keep]


def _clip(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """CrowdDet's `clip_boundary`: x1, y1 into [0, W−1] / [0, H−1]; x2, y2 into [0, W] / [0, H]."""
    low = np.minimum(np.maximum(boxes[:, :2], 0), [width - 1, height - 1])
    high = np.maximum(np.minimum(boxes[:, 2:], [width, height]), 0)
    return np.concatenate([low, high], axis=1)


def _image_index(truth: records.GroundTruth, image_ids: np.ndarray) -> np.ndarray:
    """Position of each (known) image id in `truth.image_ids`."""
    order = np.argsort(truth.image_ids)
    return order[np.searchsorted(truth.image_ids[order], image_ids)]


def _group(index: np.ndarray, size: int, *arrays: np.ndarray) -> list[list[np.ndarray]]:
    """Splits each array into `size` groups by `index`, keeping the order within a group."""
    order = np.argsort(index, kind="stable")
    bounds = np.cumsum(np.bincount(index, minlength=size))[:-1]
    return [np.split(array[order], bounds) for array in arrays]


def _passes(overlap: np.ndarray, threshold: float, rules: Protocol) -> np.ndarray:
    return overlap > threshold if rules.strict else overlap >= threshold


def _ranked_matches(images: list[_Image], iou: float, rules: Protocol) -> np.ndarray:
    """Whether each non-ignored detection is a true positive, in global ranking order."""
    statuses, scores = [], []
    for image in images:
        order = np.argsort(-image.scores, kind="stable")
        statuses.append(_caltech_match(image.boxes[order], image.gt, image.ignore, iou, rules))
        scores.append(image.scores[order])
    status, score = np.concatenate(statuses), np.concatenate(scores)
    kept = status >= 0
    return status[kept][np.argsort(-score[kept], kind="stable")] == 1


def _caltech_match(
    boxes: np.ndarray, gt: np.ndarray, ignore: np.ndarray, iou: float, rules: Protocol
) -> np.ndarray:
    """Greedy matching of score-sorted detections: 1 true positive, 0 false, -1 ignored."""
    overlaps = _iou(boxes, gt, rules.eps)
    status = np.where(_covered(boxes, ignore, iou, rules), -1, 0).astype(np.int8)
    free = np.ones(len(gt), bool)
    for d in np.flatnonzero(_passes(overlaps, iou, rules).any(axis=1)):  # A match takes a GT.
        candidates = np.where(free, overlaps[d], -1.0)
        best = int(np.argmax(candidates))
        if _passes(candidates[best], iou, rules):
            status[d], free[best] = 1, False
    return status


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """CrowdDet's trapezoid area under the ranked precision-recall points."""
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))


def _log_average_miss_rate(recall: np.ndarray, fppi: np.ndarray, sampling: str) -> float:
    """Geometric mean of the miss rate at `FPPI_POINTS` (sampling rules: module doc)."""
    if not len(recall):
        return 1.0  # No detection kept: everything is missed at every FPPI.
    miss = 1.0 - recall
    if sampling == "first_reaching":
        sampled = miss[np.minimum(np.searchsorted(fppi, FPPI_POINTS, side="left"), len(miss) - 1)]
    else:
        index = np.searchsorted(fppi, FPPI_POINTS, side="right") - 1
        sampled = np.where(index >= 0, miss[np.maximum(index, 0)], 1.0)
    with np.errstate(divide="ignore"):  # A miss rate of 0 makes the mean 0, as it should.
        return float(np.exp(np.mean(np.log(sampled))))


def _jaccard_index(images: list[_Image], iou: float, rules: Protocol) -> float:
    """Maximum over score thresholds of the mean per-image k / (m + n − k)."""
    overlaps = [_iou(image.boxes, image.gt, rules.eps) for image in images]
    det_ignored = [_covered(image.boxes, image.ignore, iou, rules) for image in images]
    gt_ignored = [_covered(image.gt, image.ignore, iou, rules) for image in images]
    counts = np.zeros((len(images), 3))  # k, m, n per image
    num_kept = np.full(len(images), -1)
    best = np.nan
    for threshold in JI_SCORE_THRESHOLDS:
        for i, image in enumerate(images):
            keep = image.scores > threshold
            if keep.sum() != num_kept[i]:  # Kept sets are nested: same size, same detections.
                num_kept[i] = keep.sum()
                counts[i] = _ji_counts(
                    overlaps[i][keep], det_ignored[i][keep], gt_ignored[i], iou, rules
                )
        k, m, n = counts.T
        counted = (m > 0) | (n > 0)
        if counted.any():
            ratio = k[counted] / (m + n - k + rules.eps)[counted]
            best = np.fmax(best, np.mean(ratio))
    return float(best)


def _ji_counts(
    overlaps: np.ndarray,
    det_ignored: np.ndarray,
    gt_ignored: np.ndarray,
    iou: float,
    rules: Protocol,
) -> tuple[int, int, int]:
    """(k matched pairs, m counted ground truth, n counted detections) of one image.

    Args:
      overlaps: [D, G] IoU of the kept detections with the ground truth.
      det_ignored: [D] whether each detection lies in an ignore region.
      gt_ignored: [G] whether each ground truth lies in an ignore region.
      iou: matching threshold.
      rules: the protocol (threshold comparison).
    """
    from scipy.optimize import linear_sum_assignment  # Heavy import: only when evaluating.

    weights = np.where(_passes(overlaps, iou, rules), overlaps, 0.0)
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
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=-1)


def _iou(a: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter + eps
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _covered(boxes: np.ndarray, regions: np.ndarray, iou: float, rules: Protocol) -> np.ndarray:
    """[A] whether each box lies in some region: intersection / (own area + eps) passes `iou`."""
    inter = _intersection(boxes, regions)
    area = np.broadcast_to(_area(boxes)[:, None] + rules.eps, inter.shape)
    ioa = np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)
    return _passes(ioa, iou, rules).any(axis=1)
