"""Host-side matchings and jitted box geometry against brute force / plain Python."""

import itertools

import jax
import numpy as np
import pytest

from perception_rl.rewards import boxes, matching


def brute_force_min_cost(cost):
    n, m = cost.shape
    if n <= m:
        perms = itertools.permutations(range(m), n)
        return min(sum(cost[i, p[i]] for i in range(n)) for p in perms)
    return brute_force_min_cost(cost.T)


def test_hungarian_is_optimal_on_the_valid_block_only():
    rng = np.random.default_rng(0)
    cost = rng.random((40, 8, 8)).astype(np.float32)
    rows, cols = rng.integers(0, 6, 40), rng.integers(0, 6, 40)
    assignment = matching.hungarian(cost, rows, cols)
    for b in range(40):
        a = assignment[b]
        assert a.sum() == min(rows[b], cols[b])
        assert not a[rows[b] :].any() and not a[:, cols[b] :].any()
        assert (a.sum(0) <= 1).all() and (a.sum(1) <= 1).all()
        if a.any():
            best = brute_force_min_cost(cost[b, : rows[b], : cols[b]].astype(np.float64))
            assert cost[b][a].sum() == pytest.approx(best, rel=1e-6)


def test_hungarian_tolerates_non_finite_costs():
    cost = np.array([[[np.nan, 1.0], [np.inf, -np.inf]]])
    assert matching.hungarian(cost, np.array([2]), np.array([2])).sum() == 2


def test_sequential_and_maximum_matching():
    seq = matching.sequential((2, 3, 4), np.array([3, 1]), np.array([2, 4]))
    assert np.argwhere(seq).tolist() == [[0, 0, 0], [0, 1, 1], [1, 0, 0]]
    rng = np.random.default_rng(1)
    adjacency = rng.random((50, 5, 6)) < 0.3
    got = matching.maximum_matching(adjacency, np.full(50, 5), np.full(50, 6))
    assert (got <= adjacency).all()
    for b in range(50):  # size equals the brute-force maximum
        perms = itertools.permutations(range(6), 5)
        best = max(sum(adjacency[b, i, p[i]] for i in range(5)) for p in perms)
        assert got[b].sum() == best


def plain_areas(a, b):
    """(intersection, union, enclosing hull) of two boxes."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter, union, hull


def plain_iou(a, b):
    inter, union, _ = plain_areas(a, b)
    return inter / union if union > 0 else 0.0


def plain_giou(a, b):
    _, union, hull = plain_areas(a, b)
    return plain_iou(a, b) - (hull - union) / hull


def test_pairwise_geometry_matches_plain_python():
    rng = np.random.default_rng(2)
    xy = rng.integers(0, 50, (2, 9, 2))
    sets = np.concatenate([xy, xy + rng.integers(0, 30, (2, 9, 2))], -1).astype(np.float32)
    sets[0, 0] = sets[1, 0] = [5, 5, 5, 5]  # degenerate boxes must stay finite
    a, b = sets
    iou = np.asarray(jax.jit(lambda a, b: boxes.iou(*boxes.pairs(a, b)))(a, b))
    giou = np.asarray(jax.jit(lambda a, b: boxes.giou(*boxes.pairs(a, b)))(a, b))
    l1 = np.asarray(boxes.l1(*boxes.pairs(a, b)))
    assert np.isfinite(giou).all()
    for i, j in itertools.product(range(9), range(9)):
        assert iou[i, j] == pytest.approx(plain_iou(a[i], b[j]), abs=1e-6)
        assert l1[i, j] == pytest.approx(np.abs(a[i] - b[j]).sum())
        if (a[i, 2:] > a[i, :2]).all() and (b[j, 2:] > b[j, :2]).all():
            assert giou[i, j] == pytest.approx(plain_giou(a[i], b[j]), abs=1e-6)
    assert -1 - 1e-6 <= giou.min() and giou.max() <= 1 + 1e-6
