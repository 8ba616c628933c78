"""Box and point geometry on padded arrays, written for use inside ``jax.jit``.

Boxes are ``[..., 4]`` as (x1, y1, x2, y2) and points ``[..., 2]``. Every function broadcasts
over leading axes; `pairs` turns two padded sets ``[..., N, d]`` and ``[..., M, d]`` into
broadcastable views, so ``iou(*pairs(a, b))`` is the ``[..., N, M]`` IoU matrix. Divisions
whose denominator is not positive give 0, never nan or inf, so padded (all-zero) slots stay
finite and masks decide what counts.
"""

from __future__ import annotations

import jax.numpy as jnp


def pairs(a: jnp.ndarray, b: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Views ``[..., N, 1, d]`` and ``[..., 1, M, d]`` of two padded sets, for pairwise ops."""
    return a[..., :, None, :], b[..., None, :, :]


def safe_div(num: jnp.ndarray, den: jnp.ndarray) -> jnp.ndarray:
    """``num / den`` where ``den > 0``, else 0 (no nan: the masked branch divides by 1)."""
    positive = den > 0
    return jnp.where(positive, num / jnp.where(positive, den, 1), 0)


def _coords(b: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    # Unbinding the coordinate axis first keeps pairwise maths on [..., N, M] arrays, which
    # XLA vectorises well, instead of on a trailing axis of size 2 or 4.
    return tuple(b[..., k] for k in range(b.shape[-1]))


def area(b: jnp.ndarray) -> jnp.ndarray:
    """Signed area (x2 - x1)(y2 - y1), as PR1 computes it."""
    x1, y1, x2, y2 = _coords(b)
    return (x2 - x1) * (y2 - y1)


def intersection(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Overlap area, 0 for disjoint boxes."""
    ax1, ay1, ax2, ay2 = _coords(a)
    bx1, by1, bx2, by2 = _coords(b)
    w = jnp.maximum(jnp.minimum(ax2, bx2) - jnp.maximum(ax1, bx1), 0)
    h = jnp.maximum(jnp.minimum(ay2, by2) - jnp.maximum(ay1, by1), 0)
    return w * h


def union(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    return area(a) + area(b) - intersection(a, b)


def iou(a: jnp.ndarray, b: jnp.ndarray, eps: float = 0.0) -> jnp.ndarray:
    """Intersection over union, ``inter / (union + eps)``; 0 where that denominator is <= 0.

    PR1's grounding reward uses eps = 0, its detection reward eps = 1e-8.
    """
    return safe_div(intersection(a, b), union(a, b) + eps)


def giou(a: jnp.ndarray, b: jnp.ndarray, eps: float = 0.0) -> jnp.ndarray:
    """Generalised IoU (DETR): ``iou - (hull - union) / hull`` with ``eps`` added to both the
    union and the enclosing hull area, as PR1's matcher does. Range [-1, 1]."""
    ax1, ay1, ax2, ay2 = _coords(a)
    bx1, by1, bx2, by2 = _coords(b)
    hull_w = jnp.maximum(jnp.maximum(ax2, bx2) - jnp.minimum(ax1, bx1), 0)
    hull_h = jnp.maximum(jnp.maximum(ay2, by2) - jnp.minimum(ay1, by1), 0)
    hull = hull_w * hull_h + eps
    return iou(a, b, eps) - safe_div(hull - union(a, b), hull)


def ioa(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Intersection over the area of ``a`` (how much of ``a`` lies inside ``b``)."""
    return safe_div(intersection(a, b), area(a))


def to_cxcywh(b: jnp.ndarray) -> jnp.ndarray:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    return jnp.concatenate([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], axis=-1)


def centers(b: jnp.ndarray) -> jnp.ndarray:
    """Box centres ``[..., 2]``."""
    return (b[..., :2] + b[..., 2:]) / 2


def l1(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Sum of absolute coordinate differences (``torch.cdist(p=1)`` entry)."""
    return sum(jnp.abs(u - v) for u, v in zip(_coords(a), _coords(b)))


def l2(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Euclidean distance."""
    return jnp.sqrt(sum(jnp.square(u - v) for u, v in zip(_coords(a), _coords(b))))
