"""One-to-one matchings between padded sets, host side (the only per-item loop in rewards).

A matching is returned as a dense bool ``[B, N, M]`` assignment matrix, which jitted reward code
consumes with masked reductions instead of gathers.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

_FINITE_MAX = np.finfo(np.float32).max / 4  # replaces nan/inf costs; scipy rejects them


def hungarian(cost: np.ndarray, num_rows: np.ndarray, num_cols: np.ndarray) -> np.ndarray:
    """Minimum-cost assignment per item, over its valid top-left block.

    Args:
      cost: ``[B, N, M]`` costs (padded).
      num_rows: int ``[B]`` valid rows per item (rows ``>= num_rows`` are padding).
      num_cols: int ``[B]`` valid columns per item.

    Returns:
      bool ``[B, N, M]``: ``min(num_rows, num_cols)`` True entries per item, no two in a row or
      column, minimising the summed cost (``scipy.optimize.linear_sum_assignment``).
    """
    cost = np.asarray(cost)
    if not np.isfinite(cost).all():
        cost = np.nan_to_num(cost, nan=_FINITE_MAX, posinf=_FINITE_MAX, neginf=-_FINITE_MAX)
    sizes = zip(np.asarray(num_rows).tolist(), np.asarray(num_cols).tolist())
    items = [(b, n, m) for b, (n, m) in enumerate(sizes) if n > 0 and m > 0]
    matches = [linear_sum_assignment(cost[b, :n, :m]) for b, n, m in items]
    assignment = np.zeros(cost.shape, bool)
    if matches:
        batch = np.repeat([b for b, _, _ in items], [min(n, m) for _, n, m in items])
        assignment[
            batch, np.concatenate([r for r, _ in matches]), np.concatenate([c for _, c in matches])
        ] = True
    return assignment


def sequential(
    shape: tuple[int, int, int], num_rows: np.ndarray, num_cols: np.ndarray
) -> np.ndarray:
    """Index-order matching (row i to column i): PR1's "w/o reward matching" ablation.

    Returns:
      bool ``[B, N, M]`` with True at (i, i) for ``i < min(num_rows, num_cols)``.
    """
    _, n, m = shape
    k = np.arange(min(n, m))
    limit = np.minimum(num_rows, num_cols)[:, None]
    assignment = np.zeros(shape, bool)
    assignment[:, k, k] = k[None, :] < limit
    return assignment


def maximum_matching(
    adjacency: np.ndarray, num_rows: np.ndarray, num_cols: np.ndarray
) -> np.ndarray:
    """Maximum-cardinality matching restricted to ``adjacency`` (bool ``[B, N, M]``).

    Its size is unique even when the matching is not, so rewards built on the count do not
    depend on tie-breaking.

    Returns:
      bool ``[B, N, M]``, a subset of ``adjacency``.
    """
    adjacency = np.asarray(adjacency, bool)
    return hungarian(-adjacency.astype(np.float64), num_rows, num_cols) & adjacency
