"""Small building blocks shared by the vision tower and the decoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class RMSNorm(nnx.Module):
    """HF Qwen2 RMSNorm: variance in float32, cast back to the input dtype, then × weight."""

    def __init__(self, dim: int, eps: float, *, dtype=jnp.float32):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), dtype))

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...] * normed.astype(x.dtype)


def layer_norm(dim: int, *, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """torch-equivalent LayerNorm (two-pass variance, eps 1e-6 as HF hard-codes it)."""
    return nnx.LayerNorm(
        dim, epsilon=1e-6, use_fast_variance=False, dtype=dtype, param_dtype=dtype, rngs=rngs
    )


def linear(n_in: int, n_out: int, *, bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        n_in,
        n_out,
        use_bias=bias,
        dtype=dtype,
        param_dtype=dtype,
        kernel_init=nnx.initializers.normal(0.02),
        rngs=rngs,
    )


def masked_attention(q, k, v, mask):
    """Softmax attention with a boolean mask; scores and softmax in float32.

    Args:
      q: [..., Lq, Hkv, R, D] queries, R query heads per key/value head (GQA).
      k, v: [..., Lk, Hkv, D].
      mask: boolean, broadcastable to [..., Hkv, R, Lq, Lk]; True = may attend.
    Returns:
      [..., Lq, Hkv, R, D] in the dtype of v.
    """
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("...qhrd,...khd->...hrqk", q, k, preferred_element_type=jnp.float32) * scale
    # A finite floor (not -inf, not a bf16 finfo.min bias): fully masked pad rows stay finite.
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("...hrqk,...khd->...qhrd", probs, v, preferred_element_type=jnp.float32)
    return out.astype(v.dtype)
