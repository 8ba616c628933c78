"""Counting accuracy: exact match of the number of predicted boxes."""

import numpy as np
import pytest

from perception_rl.metrics import count_correct, counting_metrics


def test_counting_exact_match_and_empty_output_never_correct():
    num_pred = np.array([3, 2, 0, 0, 5])
    gt = np.array([3, 3, 0, 4, 5])
    assert count_correct(num_pred, gt).tolist() == [True, False, False, False, True]
    assert counting_metrics(num_pred, gt) == {"accuracy": 0.4}


@pytest.mark.parametrize("num_pred, gt", [([1, 2], [1]), ([1.5], [1]), ([-1], [1]), ([], [])])
def test_counting_rejects_bad_counts(num_pred, gt):
    with pytest.raises(ValueError):
        counting_metrics(np.array(num_pred), np.array(gt))
