"""Rotary embeddings: the vision tower's 2-D rotary and the decoder's M-RoPE.

Frequencies and angles are always computed in float32 (as HF does); see qwen_vl_port.md §1.3,
§2.2. Both use NeoX-style rotate-half, not interleaved pairs.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def inverse_frequencies(dim: int, theta: float) -> jnp.ndarray:
    """`1 / theta^(2k/dim)` for k < dim/2, float32."""
    return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def rotate_half(x: jnp.ndarray) -> jnp.ndarray:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """`x * cos + rotate_half(x) * sin`, broadcasting cos/sin over the head axis (-2)."""
    return x * cos[..., None, :] + rotate_half(x) * sin[..., None, :]


def vision_cos_sin(rows: jnp.ndarray, cols: jnp.ndarray, head_dim: int, theta: float):
    """cos/sin [N, head_dim] for patches at (row, col): angles [r·f, c·f, r·f, c·f]."""
    inv = inverse_frequencies(head_dim // 2, theta)
    half = jnp.concatenate(
        [rows[:, None].astype(jnp.float32) * inv, cols[:, None].astype(jnp.float32) * inv], axis=-1
    )
    angles = jnp.concatenate([half, half], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def mrope_cos_sin(
    position_ids: jnp.ndarray, head_dim: int, theta: float, mrope_section: tuple[int, ...]
):
    """cos/sin [B, L, head_dim] from 3-D positions [3, B, L] (temporal, height, width).

    Frequency k takes its position from axis 0 for the first `mrope_section[0]` frequencies,
    axis 1 for the next `mrope_section[1]`, axis 2 for the rest (not interleaved).
    """
    inv = inverse_frequencies(head_dim, theta)  # [head_dim/2]
    axis_of_freq = np.repeat(np.arange(len(mrope_section)), mrope_section)
    pos = position_ids.astype(jnp.float32)[axis_of_freq]  # [head_dim/2, B, L]
    half = jnp.moveaxis(pos, 0, -1) * inv  # [B, L, head_dim/2]
    angles = jnp.concatenate([half, half], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)
