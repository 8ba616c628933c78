"""Small building blocks shared by the vision tower and the decoder."""

from __future__ import annotations

import contextlib
import contextvars
import functools

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


REMAT_POLICIES = ("none", "per_layer", "save_dots")


def remat_policy(remat: bool | str | None) -> str:
    """ "none", "per_layer" or "save_dots"; booleans mean "none" / "per_layer"."""
    if isinstance(remat, str):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat={remat!r}; expected one of {', '.join(REMAT_POLICIES)}.")
        return remat
    return "per_layer" if remat else "none"


# The weight gather of the layer calls being traced (`gathered_weights`); None = none.
_WEIGHT_GATHER = contextvars.ContextVar("weight_gather", default=None)


@contextlib.contextmanager
def gathered_weights(gather):
    """Layers called through `remat_call` while tracing inside this context first pass their
    weights through `gather` (FSDP: `parallel.partitioning.weight_gatherer`), inside their
    remat, so the backward pass gathers them again; None leaves the weights as they are."""
    token = _WEIGHT_GATHER.set(gather)
    try:
        yield
    finally:
        _WEIGHT_GATHER.reset(token)


def remat_call(fn, remat: bool | str | None):
    """`fn(module, *args)` (a layer's call) rematerialised in the backward pass.

    per_layer keeps only each layer's inputs; save_dots also keeps the results of matmuls
    without batch dimensions (the projections), recomputing attention and elementwise ops.
    The module is split and merged inside `jax.checkpoint` (not `nnx.remat`), so this also
    works under a `vmap` over a module created outside it (the vision tower per prompt).
    Inside `gathered_weights`, the layer's weights go through its gather first.
    """
    policy = remat_policy(remat)
    gather = _WEIGHT_GATHER.get()
    if policy == "none" and gather is None:
        return fn
    saveable = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    checkpoint = functools.partial(
        jax.checkpoint, policy=saveable if policy == "save_dots" else None
    )

    def call(module, *args):
        graphdef, state = nnx.split(module)

        def pure(state, *args):
            if gather is not None:
                state = gather(state)
            return fn(nnx.merge(graphdef, state), *args)

        return (pure if policy == "none" else checkpoint(pure))(state, *args)

    return call


def masked_attention(q, k, v, mask, query_chunk: int | None = None, *, heads_first: bool = False):
    """Softmax attention with a boolean mask; scores and softmax in float32.

    With `query_chunk`, queries are processed `query_chunk` at a time (a rematerialised
    `lax.map`), so the float32 scores are [.., query_chunk, Lk] instead of [.., Lq, Lk]: the
    same numbers with far less memory for long sequences (a 5,000-patch image's scores are
    1.6 GB per vision layer).

    Args:
      q: [..., Lq, Hkv, R, D] queries, R query heads per key/value head (GQA).
      k, v: [..., Lk, Hkv, D], or [..., Hkv, Lk, D] with `heads_first` (the KV cache's layout:
        the dot products then read the cache in place instead of transposing all of it).
      mask: boolean, broadcastable to [..., Hkv, R, Lq, Lk]; True = may attend.
      query_chunk: queries per chunk; None (or >= Lq) attends in one piece.
    Returns:
      [..., Lq, Hkv, R, D] in the dtype of v.
    """
    length = q.shape[-4]
    if not query_chunk or length <= query_chunk:
        return _attention(q, k, v, mask, heads_first)
    n = -(-length // query_chunk)
    pad = n * query_chunk - length
    q = jnp.pad(q, [(0, 0)] * (q.ndim - 4) + [(0, pad), (0, 0), (0, 0), (0, 0)])
    qs = jnp.moveaxis(q.reshape(*q.shape[:-4], n, query_chunk, *q.shape[-3:]), -5, 0)
    if mask.shape[-2] == 1:  # the same mask row for every query
        masks = jnp.broadcast_to(mask[None], (n, *mask.shape))
    else:
        mask = jnp.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(0, pad), (0, 0)])
        masks = mask.reshape(*mask.shape[:-2], n, query_chunk, mask.shape[-1])
        masks = jnp.moveaxis(masks, -3, 0)
    chunk = jax.checkpoint(lambda args: _attention(args[0], k, v, args[1], heads_first))
    out = jax.lax.map(chunk, (qs, masks))  # [n, ..., C, Hkv, R, D]
    out = jnp.moveaxis(out, 0, -5)
    out = out.reshape(*out.shape[:-5], n * query_chunk, *out.shape[-3:])
    return out[..., :length, :, :, :]


def _attention(q, k, v, mask, heads_first=False):
    scale = q.shape[-1] ** -0.5
    kv = "...hkd" if heads_first else "...khd"
    scores = jnp.einsum(f"...qhrd,{kv}->...hrqk", q, k, preferred_element_type=jnp.float32) * scale
    # A finite floor (not -inf, not a bf16 finfo.min bias): fully masked pad rows stay finite.
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if heads_first:  # probs [.., h, r, q, k] @ v [.., h, k, d]: a plain batched matmul
        out = jnp.einsum("...hrqk,...hkd->...hrqd", probs, v, preferred_element_type=jnp.float32)
        out = jnp.moveaxis(out, -2, -4)  # [.., q, h, r, d]
    else:
        out = jnp.einsum("...hrqk,...khd->...qhrd", probs, v, preferred_element_type=jnp.float32)
    return out.astype(v.dtype)
