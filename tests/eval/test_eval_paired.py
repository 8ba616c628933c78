"""Paired bootstrap and per-example scores vs independent references (normal approximation,
hand counts) and pass@k vs brute force over every k-subset of the samples."""

import itertools
import math

import numpy as np
import pytest

from perception_rl.eval import headroom, paired
from perception_rl.tasks import get_task


def test_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    n = 1000
    before = (rng.random(n) < 0.60).astype(float)
    # After: each example flips with some probability, mostly for the better.
    after = np.where(rng.random(n) < 0.15, 1.0, before)
    after = np.where(rng.random(n) < 0.03, 0.0, after)
    got = paired.paired_bootstrap(before, after, resamples=4000, seed=1)
    diff = after - before
    mean = sum(diff) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diff) / (n - 1))
    half = 1.959964 * sd / math.sqrt(n)
    assert got["delta"] == pytest.approx(mean)
    assert got["low"] == pytest.approx(mean - half, abs=0.15 * half)
    assert got["high"] == pytest.approx(mean + half, abs=0.15 * half)
    assert got["num_examples"] == n and got["resamples"] == 4000 and got["confidence"] == 0.95


def test_bootstrap_pairs_examples():
    # The same per-example change on very different examples: pairing leaves no spread at all.
    before = np.linspace(0.0, 0.9, 50)
    got = paired.paired_bootstrap(before, before + 0.1)
    assert (got["low"], got["delta"], got["high"]) == pytest.approx((0.1, 0.1, 0.1))
    same = paired.paired_bootstrap([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    assert (same["low"], same["high"]) == (0.0, 0.0)


def test_bootstrap_is_seeded_and_checks_its_inputs():
    a, b = np.random.default_rng(2).random((2, 30))
    assert paired.paired_bootstrap(a, b, seed=5) == paired.paired_bootstrap(a, b, seed=5)
    with pytest.raises(ValueError):
        paired.paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError):
        paired.paired_bootstrap([], [])
    with pytest.raises(ValueError):
        paired.paired_bootstrap([1.0], [0.0], confidence=1.0)


def test_counting_per_example_scores_are_exact_count_hits():
    task = get_task("counting")
    examples = [{"points": [[1, 1]] * n} for n in (1, 2, 3, 0)]
    predictions = [{"boxes": [[0, 0, 1, 1]] * n} for n in (1, 3, 3, 0)]
    got = paired.per_example_scores(task, predictions, examples, "accuracy")
    np.testing.assert_array_equal(got, [1, 0, 1, 0])  # an empty output is never right
    records = [
        {"image_id": 10 + i, "prediction": p, "ground_truth": e}
        for i, (p, e) in enumerate(zip(predictions, examples))
    ]
    assert paired.record_scores(task, records, "accuracy") == {10: 1, 11: 0, 12: 1, 13: 0}


class _PooledTask:
    """A metric over the whole split that no per-example mean reproduces (like detection F1)."""

    table_columns = (("pooled", "P"),)

    def metrics(self, predictions, examples):
        hits = sum(p["hit"] for p in predictions)
        return {"pooled": hits / (hits + len(examples))}


def test_a_pooled_metric_has_no_per_example_scores():
    predictions = [{"hit": 1}, {"hit": 0}, {"hit": 1}]
    assert paired.per_example_scores(_PooledTask(), predictions, [{}] * 3, "pooled") is None
    assert paired.headline(_PooledTask()) == "pooled"


def _brute_force_best_of_k(samples, k):
    subsets = list(itertools.combinations(samples, k))
    return sum(max(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_pass_at_k_is_the_expected_best_of_k_samples(k):
    rng = np.random.default_rng(k)
    binary = (rng.random((20, 8)) < rng.random((20, 1))).astype(float)
    graded = np.round(rng.random((20, 8)), 1)  # ties included
    for scores in (binary, graded):
        want = np.mean([_brute_force_best_of_k(list(row), k) for row in scores])
        assert headroom.pass_at_k(scores, k) == pytest.approx(want, abs=1e-12)
    # Binary: Chen et al.'s 1 - C(n-c, k) / C(n, k).
    closed = np.mean([1 - math.comb(8 - int(c), k) / math.comb(8, k) for c in binary.sum(1)])
    assert headroom.pass_at_k(binary, k) == pytest.approx(closed, abs=1e-12)


def test_pass_at_k_needs_k_samples():
    with pytest.raises(ValueError, match="pass@9"):
        headroom.pass_at_k(np.zeros((3, 8)), 9)
    with pytest.raises(ValueError):
        headroom.pass_at_k(np.zeros((3, 8)), 0)


def test_grounding_per_example_scores_are_iou_hits():
    task = get_task("grounding")
    examples = [{"boxes": [[0, 0, 10, 10]]}] * 3
    # IoU 1, 50/150 = 0.33, and an unparsed output.
    predictions = [{"boxes": [[0, 0, 10, 10]]}, {"boxes": [[5, 0, 15, 10]]}, {"boxes": []}]
    got = paired.per_example_scores(task, predictions, examples, "acc@0.5")
    np.testing.assert_array_equal(got, [1, 0, 0])
