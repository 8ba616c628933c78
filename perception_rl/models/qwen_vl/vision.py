"""Vision tower of Qwen2-VL / Qwen2.5-VL (qwen_vl_port.md §1).

Patches stay in the processor's natural (merge-window-major) order throughout. Instead of HF's
window permutation, every patch carries a frame segment id and a window segment id and attention
is masked by segment equality; attention is permutation-equivariant, so this equals HF's result
(up to summation order) while keeping shapes static for `jit`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perception_rl.models.qwen_vl import layers, rope
from perception_rl.models.qwen_vl.config import VisionConfig

PAD_SEGMENT = -1


@dataclasses.dataclass(frozen=True)
class VisionLayout:
    """Per-patch metadata derived on the host from `image_grid_thw` (int32 arrays [N_pad])."""

    rows: np.ndarray
    cols: np.ndarray
    frame_segments: np.ndarray  # attention segments of full-attention blocks
    window_segments: np.ndarray  # attention segments of windowed blocks (2.5-VL)

    def as_dict(self) -> dict[str, np.ndarray]:
        return dataclasses.asdict(self)


def vision_layout(grid_thw, config: VisionConfig, pad_to: int | None = None) -> VisionLayout:
    """Rows/cols (patch units) and segment ids for every patch, padded to `pad_to` patches.

    Padding patches get segment id -1, so they only attend to each other and never to images.
    """
    m, ws = config.spatial_merge_size, config.window_tokens
    rows, cols, frames, windows = [], [], [], []
    frame_id = window_base = 0
    for t, h, w in np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3):
        if h % m or w % m:
            raise ValueError(
                f"image grid (t={t}, h={h}, w={w}) is not a multiple of spatial_merge_size={m}."
            )
        hm, wm = h // m, w // m
        # Merge-window-major order: (block row, block col, row in block, col in block).
        bi, bj, dh, dw = np.meshgrid(
            np.arange(hm), np.arange(wm), np.arange(m), np.arange(m), indexing="ij"
        )
        r, c = (bi * m + dh).ravel(), (bj * m + dw).ravel()
        if ws:
            n_win_cols = -(-wm // ws)
            win = (bi // ws * n_win_cols + bj // ws).ravel()
            n_windows = -(-hm // ws) * n_win_cols
        else:
            win, n_windows = np.zeros_like(r), 1
        for _ in range(t):
            rows.append(r)
            cols.append(c)
            frames.append(np.full_like(r, frame_id))
            windows.append(win + window_base)
            frame_id += 1
            window_base += n_windows
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros((0,), np.int64)
    rows, cols, frames, windows = map(cat, (rows, cols, frames, windows))
    n = rows.shape[0]
    pad_to = n if pad_to is None else pad_to
    if pad_to < n:
        raise ValueError(f"{n} patches do not fit pad_to={pad_to}.")
    pad = lambda x, v: np.pad(x, (0, pad_to - n), constant_values=v).astype(np.int32)
    return VisionLayout(
        pad(rows, 0), pad(cols, 0), pad(frames, PAD_SEGMENT), pad(windows, PAD_SEGMENT)
    )


class VisionAttention(nnx.Module):
    def __init__(self, c: VisionConfig, *, dtype, rngs):
        self.num_heads = c.num_heads
        self.qkv = layers.linear(c.width, 3 * c.width, bias=True, dtype=dtype, rngs=rngs)
        self.proj = layers.linear(c.width, c.width, bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, segments, query_chunk=None):
        n = x.shape[0]
        q, k, v = jnp.split(self.qkv(x).reshape(n, 3, self.num_heads, -1), 3, axis=1)
        q, k, v = q[:, 0], k[:, 0], v[:, 0]  # [N, heads, hd]
        # HF rotates vision q/k in float32 and casts back.
        q = rope.apply_rotary(q.astype(jnp.float32), cos, sin).astype(x.dtype)
        k = rope.apply_rotary(k.astype(jnp.float32), cos, sin).astype(x.dtype)
        mask = segments[:, None] == segments[None, :]  # [N, N]
        out = layers.masked_attention(q[:, :, None], k, v, mask, query_chunk)  # [N, heads, 1, hd]
        return self.proj(out.reshape(n, -1))


class QuickGeluMLP(nnx.Module):
    """Qwen2-VL: fc2(quick_gelu(fc1(x)))."""

    def __init__(self, c: VisionConfig, *, dtype, rngs):
        self.fc1 = layers.linear(c.width, c.mlp_dim, bias=True, dtype=dtype, rngs=rngs)
        self.fc2 = layers.linear(c.mlp_dim, c.width, bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = self.fc1(x)
        return self.fc2(h * jax.nn.sigmoid(1.702 * h))


class SwiGluMLP(nnx.Module):
    """SwiGLU `down(silu(gate(x)) * up(x))`; with biases in the 2.5-VL vision tower."""

    def __init__(self, dim, hidden, *, bias: bool, dtype, rngs):
        self.gate_proj = layers.linear(dim, hidden, bias=bias, dtype=dtype, rngs=rngs)
        self.up_proj = layers.linear(dim, hidden, bias=bias, dtype=dtype, rngs=rngs)
        self.down_proj = layers.linear(hidden, dim, bias=bias, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


def _norm(family, dim, *, dtype, rngs):
    if family == "qwen2_vl":
        return layers.layer_norm(dim, dtype=dtype, rngs=rngs)
    return layers.RMSNorm(dim, 1e-6, dtype=dtype)


class VisionBlock(nnx.Module):
    def __init__(self, c: VisionConfig, family: str, *, dtype, rngs):
        self.norm1 = _norm(family, c.width, dtype=dtype, rngs=rngs)
        self.norm2 = _norm(family, c.width, dtype=dtype, rngs=rngs)
        self.attn = VisionAttention(c, dtype=dtype, rngs=rngs)
        if family == "qwen2_vl":
            self.mlp = QuickGeluMLP(c, dtype=dtype, rngs=rngs)
        else:
            self.mlp = SwiGluMLP(c.width, c.mlp_dim, bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, segments, query_chunk=None):
        x = x + self.attn(self.norm1(x), cos, sin, segments, query_chunk)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """Norm each patch, concatenate 2×2 merge windows, then an erf-GELU MLP to the LLM width."""

    def __init__(self, c: VisionConfig, family: str, *, dtype, rngs):
        merged = c.width * c.spatial_merge_size**2
        self.ln_q = _norm(family, c.width, dtype=dtype, rngs=rngs)
        self.fc1 = layers.linear(merged, merged, bias=True, dtype=dtype, rngs=rngs)
        self.fc2 = layers.linear(merged, c.out_dim, bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = self.ln_q(x).reshape(x.shape[0] // 4, -1)
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTower(nnx.Module):
    """pixel_values [N, C·Tp·P·P] → merged image features [N/4, out_dim]."""

    def __init__(self, c: VisionConfig, family: str, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = c
        self.patch_embed = layers.linear(c.patch_dim, c.width, bias=False, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List(
            [VisionBlock(c, family, dtype=dtype, rngs=rngs) for _ in range(c.depth)]
        )
        self.merger = PatchMerger(c, family, dtype=dtype, rngs=rngs)
        self.windowed = c.windowed_blocks

    def __call__(
        self,
        pixel_values,
        rows,
        cols,
        frame_segments,
        window_segments,
        remat: bool | str = False,
        query_chunk: int | None = None,
    ):
        """`remat` and `query_chunk` as in the decoder (`text.Decoder`)."""
        c = self.config
        x = self.patch_embed(pixel_values.astype(self.patch_embed.kernel.dtype))
        cos, sin = rope.vision_cos_sin(rows, cols, c.head_dim, c.rope_theta)
        call = type(self.blocks[0]).__call__
        if query_chunk:
            call = functools.partial(call, query_chunk=query_chunk)
        call = layers.remat_call(call, remat)
        for block, windowed in zip(self.blocks, self.windowed):
            x = call(block, x, cos, sin, window_segments if windowed else frame_segments)
        return self.merger(x)
