"""Grounding metrics: PR1 eval IoU, Acc@τ, their mean and centre accuracy."""

import numpy as np
import pytest

from perception_rl.metrics import box_iou, centre_inside, grounding_metrics

_GT = [0.0, 0.0, 100.0, 10.0]


def test_box_iou_is_pr1_eval_iou():
    pred = np.array([[0, 0, 60, 10], [50, 0, 150, 10], [100, 0, 200, 10], [0, 0, 100, 10]])
    # inter / (union + 1e-10): 600 / 1000, 500 / 1500, touching edges, identical.
    expected = [600 / (1000 + 1e-10), 500 / (1500 + 1e-10), 0.0, 1000 / (1000 + 1e-10)]
    assert box_iou(pred, np.array([_GT] * 4)).tolist() == expected


def test_box_iou_of_unusable_predictions_is_zero():
    pred = np.array([[np.nan] * 4, [60, 10, 0, 0], [5, 5, 5, 5]])  # unparsed, inverted, empty
    assert box_iou(pred, np.array(_GT)).tolist() == [0.0, 0.0, 0.0]


def test_grounding_metrics_per_threshold_and_mean():
    # IoU with _GT is x2 / 100 for [0, 0, x2, 10] (up to the 1e-10).
    pred = [[0, 0, 30, 10], [0, 0, 60, 10], [0, 0, 80, 10], [0, 0, 96, 10]]
    metrics = grounding_metrics(np.array(pred), np.array([_GT] * 4))
    assert metrics["acc@0.5"] == 0.75 and metrics["acc@0.75"] == 0.5
    assert metrics["acc@0.95"] == 0.25
    assert metrics["acc_mean"] == pytest.approx(0.5)
    assert metrics["centre_acc"] == 1.0
    assert metrics["mean_iou"] == pytest.approx((0.3 + 0.6 + 0.8 + 0.96) / 4)


def test_centre_accuracy_uses_the_predicted_centre():
    gt = np.array([_GT] * 4)
    pred = np.array(
        [
            [90, 0, 110, 10],  # centre (100, 5) on the edge: inside
            [95, 0, 115, 10],  # centre (105, 5): outside
            [-1000, -10, 1010, 20],  # huge box around the GT: centre inside
            [np.nan] * 4,
        ]
    )
    assert centre_inside(pred, gt).tolist() == [True, False, True, False]
    assert grounding_metrics(pred, gt)["centre_acc"] == 0.5


def test_grounding_metrics_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        grounding_metrics(np.zeros((2, 4)), np.zeros((3, 4)))


def test_pr1_protocol_thresholds_and_the_papers_average():
    # IoU with _GT is x2 / 100 for [0, 0, x2, 10]: 0.05, 0.2, 0.35, 0.6, 0.8, 0.97.
    ious = [0.05, 0.2, 0.35, 0.6, 0.8, 0.97]
    pred = np.array([[0, 0, 100 * v, 10] for v in ious])
    metrics = grounding_metrics(pred, np.array([_GT] * 6))
    expected = {0.1: 5 / 6, 0.3: 4 / 6, 0.5: 3 / 6, 0.75: 2 / 6, 0.95: 1 / 6}
    for threshold, accuracy in expected.items():
        assert metrics[f"acc@{threshold:g}"] == pytest.approx(accuracy)
    # The paper's Avg averages @0.5, @0.75 and @0.95 only: (3 + 2 + 1) / 18.
    assert metrics["acc_mean"] == pytest.approx(6 / 18)
    assert metrics["mean_iou"] == pytest.approx(sum(ious) / 6)
    # Centres (50·v, 5) lie in the GT box for every prediction.
    assert metrics["centre_acc"] == 1.0
