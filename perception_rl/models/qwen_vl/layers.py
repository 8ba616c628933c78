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


def masked_attention(q, k, v, mask, query_chunk: int | None = None, *, cache_layout: bool = False):
    """Softmax attention with a boolean mask; scores and softmax in float32.

    With `query_chunk`, queries are processed `query_chunk` at a time (a rematerialised
    `lax.map`), so the float32 scores are [.., query_chunk, Lk] instead of [.., Lq, Lk]: the
    same numbers with far less memory for long sequences (a 5,000-patch image's scores are
    1.6 GB per vision layer).

    Args:
      q: [..., Lq, Hkv, R, D] queries, R query heads per key/value head (GQA).
      k, v: [..., Lk, Hkv, D]; with `cache_layout`, the KV cache's layout (`text.LayerCache`):
        k [..., Hkv, D, Lk] and v [..., Hkv, Lk, D], the matmuls' right-hand sides as stored.
      mask: boolean, broadcastable to [..., Hkv, R, Lq, Lk]; True = may attend.
      query_chunk: queries per chunk; None (or >= Lq) attends in one piece.
    Returns:
      [..., Lq, Hkv, R, D] in the dtype of v.
    """
    length = q.shape[-4]
    if not query_chunk or length <= query_chunk:
        return _attention(q, k, v, mask, cache_layout)
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
    chunk = jax.checkpoint(lambda args: _attention(args[0], k, v, args[1], cache_layout))
    out = jax.lax.map(chunk, (qs, masks))  # [n, ..., C, Hkv, R, D]
    out = jnp.moveaxis(out, 0, -5)
    out = out.reshape(*out.shape[:-5], n * query_chunk, *out.shape[-3:])
    return out[..., :length, :, :, :]


def _attention(q, k, v, mask, cache_layout=False):
    if cache_layout:
        return cached_attention(q, k, v, mask)
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("...qhrd,...khd->...hrqk", q, k, preferred_element_type=jnp.float32)
    # A finite floor (not -inf, not a bf16 finfo.min bias): fully masked pad rows stay finite.
    scores = jnp.where(mask, scores * scale, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("...hrqk,...khd->...qhrd", probs, v, preferred_element_type=jnp.float32)
    return out.astype(v.dtype)


def cached_attention(q, k, v, mask, prefix: dict | None = None):
    """Attention against the KV cache's layout (`text.LayerCache`): k [N, h, d, S], v [N, h, S, d].

    The R query heads and Lq queries of a key/value head form one matrix, so both products are
    plain batched matmuls over (rows, heads) whose right-hand sides are the cache as stored: a
    decode step (Lq = 1) streams each layer's cache once.

    Args:
      q: [N, Lq, Hkv, R, D].
      k, v: the rows' own cache.
      mask: boolean, broadcastable to [N, Hkv, R, Lq, P + S] (the prefix's P slots first).
      prefix: optional {"k": [B, h, d, P], "v": [B, h, P, d]} shared by N / B consecutive rows
        (the sampler's G completions of one prompt): its products take the queries of all
        N / B rows at once, and its slots are read once per prompt instead of once per row.
    Returns:
      [N, Lq, Hkv, R, D] in the dtype of v.
    """
    rows, length, _, group, dim = q.shape
    parts = [(k, v)] if prefix is None else [(prefix["k"], prefix["v"]), (k, v)]
    scores = []
    for keys, _ in parts:
        share = rows // keys.shape[0]
        product = jnp.einsum(
            "bhmd,bhdk->bhmk", _query_rows(q, share), keys, preferred_element_type=jnp.float32
        )
        scores.append(_per_row(product, share, group, length))
    scores = jnp.concatenate(scores, axis=-1) * dim**-0.5  # [N, h, r, q, P + S]
    # A finite floor (not -inf, not a bf16 finfo.min bias): fully masked pad rows stay finite.
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out, start = 0.0, 0
    for _, values in parts:
        share, size = rows // values.shape[0], values.shape[-2]
        part = _grouped(probs[..., start : start + size], share)
        product = jnp.einsum("bhmk,bhkd->bhmd", part, values, preferred_element_type=jnp.float32)
        out, start = out + _per_row(product, share, group, length), start + size
    return out.transpose(0, 3, 1, 2, 4).astype(v.dtype)  # [N, q, h, r, d]


def _query_rows(q, share: int):
    """[N, Lq, h, r, d] → [N / share, h, share·r·Lq, d]: the queries meeting one cache's head."""
    rows, length, heads, group, dim = q.shape
    q = q.reshape(rows // share, share, length, heads, group, dim).transpose(0, 3, 1, 4, 2, 5)
    return q.reshape(rows // share, heads, share * group * length, dim)


def _grouped(x, share: int):
    """[N, h, r, Lq, X] → [N / share, h, share·r·Lq, X] (`_query_rows`' row order)."""
    rows, heads, group, length, last = x.shape
    x = x.reshape(rows // share, share, heads, group, length, last).transpose(0, 2, 1, 3, 4, 5)
    return x.reshape(rows // share, heads, share * group * length, last)


def _per_row(x, share: int, group: int, length: int):
    """`_grouped`'s inverse: [N / share, h, share·r·Lq, X] → [N, h, r, Lq, X]."""
    blocks, heads, _, last = x.shape
    x = x.reshape(blocks, heads, share, group, length, last).transpose(0, 2, 1, 3, 4, 5)
    return x.reshape(blocks * share, heads, group, length, last)
