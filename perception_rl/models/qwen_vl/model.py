"""The Qwen2-VL / Qwen2.5-VL policy as one Flax NNX module.

Parameter paths mirror the HF checkpoint names (`visual.blocks.0.attn.qkv`,
`model.layers.3.self_attn.q_proj`, `lm_head`), which keeps checkpoint I/O and sharding rules
readable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perception_rl.models.qwen_vl import layers
from perception_rl.models.qwen_vl.config import QwenVLConfig
from perception_rl.models.qwen_vl.text import Decoder, init_cache
from perception_rl.models.qwen_vl.vision import VisionTower, vision_layout


def causal_mask(attention_mask: jax.Array) -> jax.Array:
    """[B, L] padding mask → [B, L, L] boolean: key is real and not in the future."""
    l = attention_mask.shape[-1]
    causal = jnp.tril(jnp.ones((l, l), bool))
    return causal[None] & (attention_mask[:, None, :] > 0)


class QwenVL(nnx.Module):
    """Vision tower + Qwen2 decoder + LM head (tied to the embeddings or separate)."""

    def __init__(self, config: QwenVLConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.visual = VisionTower(config.vision, config.family, dtype=dtype, rngs=rngs)
        self.model = Decoder(config.text, dtype=dtype, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = layers.linear(
                config.text.hidden_size, config.text.vocab_size, bias=False, dtype=dtype, rngs=rngs
            )

    @property
    def dtype(self):
        return self.model.embed_tokens.embedding.dtype

    # ------------------------------------------------------------------------------ pieces
    def image_features(
        self, pixel_values, rows, cols, frame_segments, window_segments, **memory_options
    ):
        """Merged vision features [N/4, hidden] for concatenated patches [N, patch_dim].

        `memory_options`: `remat` / `query_chunk` of `VisionTower.__call__`.
        """
        return self.visual(
            pixel_values, rows, cols, frame_segments, window_segments, **memory_options
        )

    def embed(self, input_ids, pixel_values=None, vision_layout=None, image_slots=None):
        """Token embeddings with image features scattered into the image slots.

        Features are consumed in row-major (batch, position) order, as HF does. `image_slots`
        (bool [B, L]) defaults to `input_ids == image_token_id`; pass it to keep a sampled
        `<|image_pad|>` in a completion an ordinary token.
        """
        embeds = self.model.embed_tokens(input_ids)
        if pixel_values is None:
            return embeds
        feats = self.image_features(pixel_values, **vision_layout).astype(embeds.dtype)
        is_image = input_ids == self.config.image_token_id if image_slots is None else image_slots
        index = jnp.cumsum(is_image.reshape(-1)) - 1
        gathered = feats[jnp.clip(index, 0, feats.shape[0] - 1)].reshape(embeds.shape)
        return jnp.where(is_image[..., None], gathered, embeds)

    def head(self) -> tuple[jax.Array, bool]:
        """The output projection: (embedding [V, H], True) if tied, else (kernel [H, V], False)."""
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.embedding[...], True
        return self.lm_head.kernel[...], False

    def logits(self, hidden):
        weight, tied = self.head()
        eq = "...h,vh->...v" if tied else "...h,hv->...v"
        return jnp.einsum(eq, hidden, weight.astype(hidden.dtype))

    def init_cache(self, batch: int, size: int):
        return init_cache(self.config.text, batch, size, self.dtype)

    def hidden_states(
        self,
        input_ids,
        attention_mask,
        position_ids,
        pixel_values=None,
        vision_layout=None,
        image_slots=None,
        remat: bool = False,
    ):
        """Final-norm hidden states [B, L, H] of a full (uncached) forward."""
        embeds = self.embed(input_ids, pixel_values, vision_layout, image_slots)
        hidden, _ = self.model(embeds, position_ids, causal_mask(attention_mask), remat=remat)
        return hidden

    # ------------------------------------------------------------------------- HF-style call
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        pixel_values=None,
        image_grid_thw=None,
        rope_deltas=None,
        vision_layout=None,
        image_slots=None,
        **unused,
    ):
        """Logits [B, L, vocab] for a processor batch (`logits = model(**batch)`).

        `rope_deltas` is accepted (the processor returns it) but only matters for decoding.
        Without `vision_layout` or `position_ids`, they are derived on the host from the concrete
        `image_grid_thw` / `input_ids`, so pass them explicitly inside `jit`.
        """
        del rope_deltas, unused
        input_ids = jnp.asarray(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if pixel_values is not None and vision_layout is None:
            vision_layout = vision_layout_dict(image_grid_thw, self.config, len(pixel_values))
        if position_ids is None:
            position_ids = default_position_ids(
                self.config, input_ids, attention_mask, image_grid_thw
            )
        hidden = self.hidden_states(
            input_ids,
            jnp.asarray(attention_mask),
            position_ids,
            pixel_values,
            vision_layout,
            image_slots,
        )
        return self.logits(hidden)


def vision_layout_dict(image_grid_thw, config: QwenVLConfig, num_patches: int | None = None):
    return vision_layout(np.asarray(image_grid_thw), config.vision, num_patches).as_dict()


def default_position_ids(config: QwenVLConfig, input_ids, attention_mask, image_grid_thw=None):
    """M-RoPE positions computed on the host (HF's `get_rope_index`, 5.x conventions)."""
    from perception_rl.processing.positions import get_rope_index  # host-only dependency

    grid = None if image_grid_thw is None else np.asarray(image_grid_thw)
    positions, _ = get_rope_index(
        np.asarray(input_ids),
        np.asarray(attention_mask),
        grid,
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        spatial_merge_size=config.vision.spatial_merge_size,
    )
    return jnp.asarray(positions)
