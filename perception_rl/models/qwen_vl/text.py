"""Qwen2 decoder with M-RoPE and an optional static KV cache (qwen_vl_port.md §2).

Attention takes a precomputed boolean mask [B, Lq, S] built once per forward by the model, so
the same layer code serves a full forward (S = Lq) and cached prefill/decode (S = cache size).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from perception_rl.models.qwen_vl import layers, rope
from perception_rl.models.qwen_vl.config import TextConfig
from perception_rl.models.qwen_vl.vision import SwiGluMLP

# One layer's cache: {"k": [B, kv_heads, head_dim, S], "v": [B, kv_heads, S, head_dim]}: each the
# right-hand side of its attention matmul as stored (scores = q @ k, out = probs @ v), so a decode
# step streams the cache once, without a per-step transpose or repacking. Slot-major, XLA
# transposed each layer's whole cache at every decode step (29% of a B = 16 decode step's time);
# with keys [.., S, head_dim], the scores' matmul ran at 11 GB/s at B = 16 and 4 GB/s at B = 64,
# against 15 GB/s for keys [.., head_dim, S]. An optional "prefix" {"k", "v"} of B / n rows holds
# slots shared by n consecutive rows (a prompt's, under its n sampled completions): the mask's
# first columns are its slots, and `cache_index` counts the rows' own slots.
LayerCache = dict[str, jax.Array]
CACHE_SLOT_AXES = {"k": 3, "v": 2}


def init_cache(c: TextConfig, batch: int, size: int, dtype) -> list[LayerCache]:
    k_shape = (batch, c.num_kv_heads, c.head_dim, size)
    v_shape = (batch, c.num_kv_heads, size, c.head_dim)
    return [
        {"k": jnp.zeros(k_shape, dtype), "v": jnp.zeros(v_shape, dtype)}
        for _ in range(c.num_layers)
    ]


def pad_cache_slots(layer: LayerCache, extra: int) -> LayerCache:
    """The layer's own "k" and "v" with `extra` empty slots appended (a prefix stays out)."""

    def pad(name):
        widths = [(0, 0)] * layer[name].ndim
        widths[CACHE_SLOT_AXES[name]] = (0, extra)
        return jnp.pad(layer[name], widths)

    return {name: pad(name) for name in CACHE_SLOT_AXES}


class Attention(nnx.Module):
    """GQA self-attention; q/k/v with bias, o_proj without."""

    def __init__(self, c: TextConfig, *, dtype, rngs):
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        hd = c.head_dim
        self.q_proj = layers.linear(
            c.hidden_size, c.num_heads * hd, bias=True, dtype=dtype, rngs=rngs
        )
        self.k_proj = layers.linear(
            c.hidden_size, c.num_kv_heads * hd, bias=True, dtype=dtype, rngs=rngs
        )
        self.v_proj = layers.linear(
            c.hidden_size, c.num_kv_heads * hd, bias=True, dtype=dtype, rngs=rngs
        )
        self.o_proj = layers.linear(
            c.num_heads * hd, c.hidden_size, bias=False, dtype=dtype, rngs=rngs
        )

    def __call__(
        self, x, cos, sin, mask, cache: LayerCache | None = None, cache_index=None, query_chunk=None
    ):
        b, l, _ = x.shape
        q = self.q_proj(x).reshape(b, l, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, l, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, l, self.num_kv_heads, self.head_dim)
        # HF casts the float32 cos/sin to the activation dtype and rotates in that dtype.
        cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
        q, k = rope.apply_rotary(q, cos, sin), rope.apply_rotary(k, cos, sin)
        q = q.reshape(b, l, self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim)
        if cache is None:
            out = layers.masked_attention(q, k, v, mask[:, None, None], query_chunk)
            return self.o_proj(out.reshape(b, l, -1)), None
        new_k = k.transpose(0, 2, 3, 1).astype(cache["k"].dtype)  # [B, kv, hd, L], L small
        new_v = v.swapaxes(1, 2).astype(cache["v"].dtype)  # [B, kv, L, hd]
        cache = {
            **cache,
            "k": jax.lax.dynamic_update_slice(cache["k"], new_k, (0, 0, 0, cache_index)),
            "v": jax.lax.dynamic_update_slice(cache["v"], new_v, (0, 0, cache_index, 0)),
        }
        k, v = cache["k"].astype(x.dtype), cache["v"].astype(x.dtype)
        if "prefix" in cache:  # decoding: queries only, nothing to chunk
            prefix = jax.tree.map(lambda t: t.astype(x.dtype), cache["prefix"])
            out = layers.cached_attention(q, k, v, mask[:, None, None], prefix)
        else:
            out = layers.masked_attention(
                q, k, v, mask[:, None, None], query_chunk, cache_layout=True
            )
        return self.o_proj(out.reshape(b, l, -1)), cache


class DecoderLayer(nnx.Module):
    def __init__(self, c: TextConfig, *, dtype, rngs):
        self.input_layernorm = layers.RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype)
        self.post_attention_layernorm = layers.RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype)
        self.self_attn = Attention(c, dtype=dtype, rngs=rngs)
        self.mlp = SwiGluMLP(c.hidden_size, c.intermediate_size, bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, h, cos, sin, mask, cache=None, cache_index=None, query_chunk=None):
        a, cache = self.self_attn(
            self.input_layernorm(h), cos, sin, mask, cache, cache_index, query_chunk
        )
        h = h + a
        return h + self.mlp(self.post_attention_layernorm(h)), cache


class Decoder(nnx.Module):
    """Embeddings + decoder layers + final norm (HF `model.language_model`)."""

    def __init__(self, c: TextConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = c
        self.embed_tokens = nnx.Embed(
            c.vocab_size,
            c.hidden_size,
            dtype=dtype,
            param_dtype=dtype,
            embedding_init=nnx.initializers.normal(0.02),
            rngs=rngs,
        )
        self.layers = nnx.List(
            [DecoderLayer(c, dtype=dtype, rngs=rngs) for _ in range(c.num_layers)]
        )
        self.norm = layers.RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype)

    def __call__(
        self,
        embeds,
        position_ids,
        mask,
        cache=None,
        cache_index=None,
        remat: bool | str = False,
        query_chunk: int | None = None,
    ):
        """embeds [B, L, H], position_ids [3, B, L], mask [B, L, S] → (hidden [B, L, H], cache).

        `remat`: a `layers.remat_call` policy per layer; `query_chunk`: attention queries per
        chunk (`layers.masked_attention`).
        """
        c = self.config
        cos, sin = rope.mrope_cos_sin(position_ids, c.head_dim, c.rope_theta, c.mrope_section)
        h, new_cache = embeds, []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else cache[i]
            call = type(layer).__call__
            if query_chunk:
                call = functools.partial(call, query_chunk=query_chunk)
            call = layers.remat_call(call, remat)
            h, layer_cache = call(layer, h, cos, sin, mask, layer_cache, cache_index)
            new_cache.append(layer_cache)
        return self.norm(h), (None if cache is None else new_cache)
