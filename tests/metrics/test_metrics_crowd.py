"""crowd_metrics on hand-computed cases, one per definition (protocol "inclusive").

Boxes are horizontal strips of height 10 (`_strip(x1, x2)`), so an IoU is a ratio of lengths.
"""

import math

import numpy as np
import pytest

from perception_rl import metrics


def crowd_metrics(gt, detections, **kw):
    """These cases are hand-computed for ≥ thresholds without clipping (no image sizes)."""
    return metrics.crowd_metrics(gt, detections, **{"protocol": "inclusive", **kw})


def _strip(x1, x2):
    return [float(x1), 0.0, float(x2 - x1), 10.0]


def _gt(*images):
    """images: per image, a list of (x1, x2) or (x1, x2, "ignore")."""
    annotations = [
        {"image_id": i + 1, "bbox": _strip(*box[:2]), "iscrowd": int(len(box) == 3)}
        for i, boxes in enumerate(images)
        for box in boxes
    ]
    return {"images": [{"id": i + 1} for i in range(len(images))], "annotations": annotations}


def _dets(*rows):
    """rows: (image_id, x1, x2, score)."""
    return [{"image_id": i, "bbox": _strip(x1, x2), "score": s} for i, x1, x2, s in rows]


def test_greedy_matching_takes_highest_iou_and_counts_duplicates():
    gt = _gt([(0, 10), (3, 13), (30, 40)])
    metrics = crowd_metrics(
        gt,
        _dets(
            (1, 3, 13, 0.9),  # IoU 1 with (3, 13), 7/13 with (0, 10): takes (3, 13).
            (1, -2, 8, 0.8),  # IoU 8/12 with (0, 10), 5/15 with (3, 13): takes (0, 10).
            (1, 4, 14, 0.7),  # A duplicate of (3, 13), already taken: false positive.
            (1, 60, 70, 0.6),  # Background: false positive.
        ),
    )
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["precision"] == pytest.approx(2 / 4)
    assert metrics["F1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))


def test_ignore_regions_neither_count_as_misses_nor_make_false_positives():
    gt = _gt([(0, 10), (150, 160), (100, 200, "ignore")])
    metrics = crowd_metrics(
        gt,
        _dets(
            (1, 0, 10, 0.9),  # true positive
            (1, 150, 160, 0.8),  # true positive inside the ignore region: a match comes first
            (1, 120, 130, 0.7),  # inside the ignore region (IoA 1): dropped
            (1, 90, 110, 0.6),  # IoA exactly 0.5: dropped
            (1, 90, 101, 0.5),  # IoA 1/11: false positive
        ),
    )
    assert metrics["recall"] == 1.0  # The ignore region is not a ground truth to find.
    assert metrics["precision"] == pytest.approx(2 / 3)


def test_average_precision_is_crowddet_trapezoid_in_score_order():
    gt = _gt([(0, 10), (20, 30)])
    # Output order differs from score order; ranked: TP, FP, TP.
    dets = _dets((1, 20, 30, 0.7), (1, 0, 10, 0.9), (1, 50, 60, 0.8))
    # recall (.5, .5, 1), precision (1, .5, 2/3): the first point starts the curve.
    expected = 0.5 * (0.5 + 2 / 3) / 2
    assert crowd_metrics(gt, dets)["AP50"] == pytest.approx(expected)


def test_log_average_miss_rate_over_nine_fppi_points():
    gt = _gt([(0, 10)], [(0, 10)], [(0, 10)], [(0, 10)])
    dets = _dets(
        (1, 0, 10, 0.9), (2, 50, 60, 0.8), (2, 0, 10, 0.7), (3, 0, 10, 0.6), (4, 50, 60, 0.5)
    )
    # Ranked TP FP TP TP FP over 4 images: FPPI 0, .25, .25, .25, .5; miss .75 .75 .5 .25 .25.
    # Points 0.01 ... 0.178 see FPPI 0 (miss .75); 0.316, 0.562 and 1 see FPPI .25 / .5 (.25).
    expected = math.exp((6 * math.log(0.75) + 3 * math.log(0.25)) / 9)
    assert crowd_metrics(gt, dets)["MR-2"] == pytest.approx(expected)


def test_miss_rate_before_the_first_detection_is_one():
    gt = _gt([(0, 10), (20, 30)])
    # A false positive ranks first on the only image: FPPI jumps to 1. Below that the operating
    # point is "no detection" (miss rate 1); at FPPI 1 the true positive gives miss rate .5.
    dets = _dets((1, 50, 60, 0.9), (1, 0, 10, 0.8))
    assert crowd_metrics(gt, dets)["MR-2"] == pytest.approx(0.5 ** (1 / 9))


def test_jaccard_index_uses_optimal_one_to_one_matching():
    gt = _gt([(0, 10), (4, 14)])
    # Greedy by score gives (1, 11) the ground truth (0, 10) and leaves (-3, 7) unmatched; the
    # maximum-IoU matching pairs (1, 11)-(4, 14) (7/11) and (-3, 7)-(0, 10) (7/13).
    metrics = crowd_metrics(gt, _dets((1, 1, 11, 0.9), (1, -3, 7, 0.8)))
    assert metrics["recall"] == 0.5
    assert metrics["JI"] == 1.0  # k = 2, m = 2, n = 2


def test_jaccard_index_discounts_ignored_boxes_and_skips_empty_images():
    gt = _gt([(0, 10), (150, 160), (100, 200, "ignore")], [], [])
    rows = [
        (1, 0, 10, 0.95),  # matched
        (1, 120, 130, 0.5),  # unmatched inside the ignore region: not counted in n
        (3, 50, 60, 0.05),
    ]  # image 3 has no ground truth
    # (150, 160) is unmatched but inside the ignore region: not counted in m. Image 2 is empty.
    constant = [(i, x1, x2, 1.0) for i, x1, x2, _ in rows]
    # All kept: image 1 k=1 m=1 n=1 -> 1, image 3 k=0 m=0 n=1 -> 0, image 2 skipped.
    assert crowd_metrics(gt, _dets(*constant))["JI"] == pytest.approx(0.5)
    # With scores, thresholds >= 0.1 drop image 3's detection, which empties image 3: JI 1.
    assert crowd_metrics(gt, _dets(*rows))["JI"] == 1.0


def test_image_without_ground_truth_counts_its_false_positives():
    gt = _gt([(0, 10)], [])
    metrics = crowd_metrics(gt, _dets((1, 0, 10, 1.0), (2, 0, 10, 1.0)))
    assert metrics["recall"] == 1.0
    assert metrics["precision"] == 0.5
    assert metrics["JI"] == 0.5  # (1 + 0) / 2 images with boxes
    assert metrics["F1"] == pytest.approx(2 / 3)


def test_no_detections():
    metrics = crowd_metrics(_gt([(0, 10)], []), [])
    assert metrics["recall"] == metrics["AP50"] == metrics["JI"] == metrics["F1"] == 0.0
    assert metrics["MR-2"] == 1.0
    assert np.isnan(metrics["precision"])


def test_no_ground_truth():
    metrics = crowd_metrics(_gt([(0, 10, "ignore")]), _dets((1, 50, 60, 1.0)))
    assert np.isnan(metrics["recall"]) and np.isnan(metrics["AP50"]) and np.isnan(metrics["MR-2"])
    assert metrics["precision"] == metrics["F1"] == metrics["JI"] == 0.0


def test_iou_threshold():
    gt = _gt([(0, 10)])
    dets = _dets((1, 3, 10, 1.0))  # IoU 0.7
    assert crowd_metrics(gt, dets, iou=0.7)["recall"] == 1.0
    assert crowd_metrics(gt, dets, iou=0.75)["recall"] == 0.0
    with pytest.raises(ValueError, match="iou"):
        crowd_metrics(gt, dets, iou=0.0)
