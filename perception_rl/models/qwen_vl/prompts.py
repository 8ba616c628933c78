"""The one prompt layout of training and sampling, and the prefill forward that reads it.

A prompt batch is batch-major, every array (even the image patches) with the prompt first:

    input_ids        int32   [B, P]      left-padded, P a bucket (`bucket`)
    attention_mask   int32   [B, P]
    position_ids     int32   [B, 3, P]   M-RoPE positions, batch first (unlike the processor)
    pixel_values     float32 [B, N, D]   each prompt's own patches, N a bucket
    patch_rows, patch_cols, frame_segments, window_segments   int32 [B, N]   vision layout
    image_grid_thw   int32   [B, K, 3]   zero rows pad to K images

`split_processor_batch` turns a processor batch (patches of all prompts concatenated, positions
[3, B, L]) into unpadded per-prompt arrays once; `pad_prompts` stacks those. The train step
(`rl.train_step`) and the sampler (`sampling.generate`) both read this layout and both run the
prompt through `prompt_states`. One `NamedSharding` splits the whole batch over the batch axes,
micro-batches and hosts slice it like any other array, and the vision tower runs per prompt
(`jax.vmap`): a prompt's patches attend only within their row, so its cost grows with the
batch, not with the batch squared.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from perception_rl.models.qwen_vl.config import VisionConfig
from perception_rl.models.qwen_vl.model import causal_mask, default_position_ids
from perception_rl.models.qwen_vl.vision import PAD_SEGMENT, vision_layout

LAYOUT_KEYS = ("patch_rows", "patch_cols", "frame_segments", "window_segments")
_LAYOUT_FIELDS = ("rows", "cols", "frame_segments", "window_segments")  # `VisionLayout` names
MIN_PROMPT_LENGTH = 16
MIN_PATCHES = 64  # One 112×112 image.


# --------------------------------------------------------------------------- host: layout
def bucket(n: int, minimum: int) -> int:
    """Smallest 2^k or 3 * 2^(k-1) that is >= max(n, minimum): a few compiled shapes per run.

    Two buckets per octave waste at most a third of a padded axis (powers of two alone waste
    up to half), which matters for the prompt pass: a 1,300-token Perception-R1 prompt pads
    to 1,536 rather than 2,048.
    """
    n = max(int(n), minimum, 1)
    power = 1 << (n - 1).bit_length()
    three_quarters = 3 * power // 4
    return three_quarters if three_quarters >= n and three_quarters >= minimum else power


def split_processor_batch(
    batch: dict, vision: VisionConfig, image_token_id: int, position_ids=None
) -> list[dict]:
    """Unpadded per-prompt arrays of a processor batch (any padding side).

    Args:
        batch: processor output: input_ids / attention_mask [B, L], position_ids [3, B, L],
            and optionally pixel_values [N, D] with image_grid_thw [K, 3] (images in row order).
        vision: the vision config (spatial merge and windows of the layout).
        image_token_id: the `<|image_pad|>` id; each row's count of them says which images
            (and patches) are its own.
        position_ids: [3, B, L] positions when `batch` has none.

    Returns:
        One dict per row: input_ids [L_b], position_ids [3, L_b], pixel_values [N_b, D],
        image_grid_thw [K_b, 3] and the four vision-layout arrays [N_b].
    """
    ids = np.asarray(batch["input_ids"])
    mask = np.asarray(batch["attention_mask"]) > 0
    positions = np.asarray(batch["position_ids"] if position_ids is None else position_ids)
    pixels = batch.get("pixel_values")
    grids = np.asarray(batch.get("image_grid_thw", np.zeros((0, 3))), np.int64).reshape(-1, 3)
    pixels = np.zeros((0, vision.patch_dim), np.float32) if pixels is None else np.asarray(pixels)
    merged = grids.prod(axis=1) // vision.spatial_merge_size**2  # visual tokens per image
    image, patch, prompts = 0, 0, []
    for row in range(len(ids)):
        wanted = int(np.sum(ids[row][mask[row]] == image_token_id))
        first = image
        while wanted > 0 and image < len(grids):
            wanted -= int(merged[image])
            image += 1
        if wanted != 0:
            raise ValueError(
                f"prompt row {row}: its <|image_pad|> tokens do not match the image grids "
                f"(image_grid_thw rows {first}..{image - 1})."
            )
        grid = grids[first:image]
        count = int(grid.prod(axis=1).sum())
        layout = vision_layout(grid, vision).as_dict()
        prompts.append(
            {
                "input_ids": ids[row][mask[row]].astype(np.int32),
                "position_ids": positions[:, row][:, mask[row]].astype(np.int32),
                "pixel_values": pixels[patch : patch + count].astype(np.float32),
                "image_grid_thw": grid.astype(np.int32),
                **{key: layout[name] for key, name in zip(LAYOUT_KEYS, _LAYOUT_FIELDS)},
            }
        )
        patch += count
    if patch != len(pixels):
        raise ValueError(
            f"the prompts' images use {patch} patches; pixel_values has {len(pixels)}."
        )
    return prompts


def prompt_sizes(prompts: Sequence[dict]) -> np.ndarray:
    """Bucketed (prompt length, patches per prompt, images per prompt) of unpadded prompts."""
    return bucketed_sizes(
        [
            max(len(p[key]) for p in prompts)
            for key in ("input_ids", "pixel_values", "image_grid_thw")
        ]
    )


def _pad_to(x: np.ndarray, size: int, axis: int, *, left: bool, value=0) -> np.ndarray:
    width = [(0, 0)] * x.ndim
    width[axis] = (size - x.shape[axis], 0) if left else (0, size - x.shape[axis])
    return np.pad(x, width, constant_values=value)


def pad_prompts(
    prompts: Sequence[dict], *, pad_id: int, sizes: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """Stacks unpadded prompts into the batch-major arrays of the module docstring.

    Args:
        prompts: per-prompt arrays (`split_processor_batch`, a prompt record's "prompt").
        pad_id: token id of left padding (masked out).
        sizes: (length, patches, images) to pad to; default `prompt_sizes(prompts)`. Hosts of a
            multi-host run pass the maximum over all hosts so their arrays concatenate.

    Returns:
        The padded arrays; the patch arrays are absent when no prompt has an image.
    """
    length, patches, images = (int(s) for s in (prompt_sizes(prompts) if sizes is None else sizes))
    stack = lambda key, size, axis, **kw: np.stack(
        [_pad_to(p[key], size, axis, **kw) for p in prompts]
    )
    out = {
        "input_ids": stack("input_ids", length, 0, left=True, value=pad_id),
        "attention_mask": np.stack(
            [_pad_to(np.ones(len(p["input_ids"]), np.int32), length, 0, left=True) for p in prompts]
        ),
        # Pads get position 1, as HF's get_rope_index gives them; they are masked anyway.
        "position_ids": stack("position_ids", length, 1, left=True, value=1),
    }
    if patches:
        out["pixel_values"] = stack("pixel_values", patches, 0, left=False).astype(np.float32)
        out["image_grid_thw"] = stack("image_grid_thw", images, 0, left=False)
        out["frame_segments"] = stack("frame_segments", patches, 0, left=False, value=PAD_SEGMENT)
        out["window_segments"] = stack("window_segments", patches, 0, left=False, value=PAD_SEGMENT)
        out["patch_rows"] = stack("patch_rows", patches, 0, left=False)
        out["patch_cols"] = stack("patch_cols", patches, 0, left=False)
    return out


def prompt_batch(batch: dict, config, *, pad_id: int) -> dict[str, np.ndarray]:
    """The batch-major prompts of a processor batch (what `sampling.generate` reads).

    `config` is the model's `QwenVLConfig`; positions are derived (HF's `get_rope_index`) when
    the batch has none.
    """
    positions = None
    if "position_ids" not in batch:
        positions = default_position_ids(
            config, batch["input_ids"], batch["attention_mask"], batch.get("image_grid_thw")
        )
    prompts = split_processor_batch(batch, config.vision, config.image_token_id, positions)
    return pad_prompts(prompts, pad_id=pad_id)


def check_layout(prompts: dict) -> None:
    """Raises a ValueError naming the conversion when `prompts` is not in this layout (e.g. a
    processor batch, whose positions are [3, B, L] and patches concatenated)."""
    batch, length = np.shape(prompts["input_ids"])
    problems = []
    if np.shape(prompts.get("position_ids")) != (batch, 3, length):
        problems.append(f"position_ids {np.shape(prompts.get('position_ids'))}")
    if "pixel_values" in prompts:
        if np.ndim(prompts["pixel_values"]) != 3:
            problems.append(f"pixel_values {np.shape(prompts['pixel_values'])}")
        problems += [f"no {key}" for key in LAYOUT_KEYS if key not in prompts]
    if problems:
        raise ValueError(
            f"expected batch-major prompts (position_ids [B, 3, P] = [{batch}, 3, {length}], "
            f"pixel_values [B, N, D] with {', '.join(LAYOUT_KEYS)}); got {'; '.join(problems)}. "
            "Convert a processor batch with "
            "perception_rl.models.qwen_vl.prompts.prompt_batch(batch, model.config, pad_id=...)."
        )


def padded_sizes(prompts: dict[str, np.ndarray]) -> np.ndarray:
    """(length, patches, images) of already padded prompt arrays."""
    if "pixel_values" not in prompts:
        return np.asarray([prompts["input_ids"].shape[1], 0, 0], np.int64)
    return np.asarray(
        [
            prompts["input_ids"].shape[1],
            prompts["pixel_values"].shape[1],
            prompts["image_grid_thw"].shape[1],
        ],
        np.int64,
    )


def bucketed_sizes(sizes: Sequence[int]) -> np.ndarray:
    """(length, patches, images) rounded up to the buckets `prompt_sizes` pads to."""
    length, patches, images = (int(s) for s in sizes)
    return np.asarray(
        [
            bucket(length, MIN_PROMPT_LENGTH),
            bucket(patches, MIN_PATCHES) if patches else 0,
            bucket(images, 1) if images else 0,
        ],
        np.int64,
    )


def repad_prompts(
    prompts: dict[str, np.ndarray], sizes: Sequence[int], *, pad_id: int
) -> dict[str, np.ndarray]:
    """Pads padded prompt arrays further, to (length, patches, images) = `sizes`.

    Token arrays grow on the left, patch arrays on the right, so the padded batch equals one
    padded to `sizes` from the start; batches of different buckets can then be concatenated.
    """
    length, patches, images = (int(s) for s in sizes)
    out = {
        "input_ids": _pad_to(prompts["input_ids"], length, 1, left=True, value=pad_id),
        "attention_mask": _pad_to(prompts["attention_mask"], length, 1, left=True),
        "position_ids": _pad_to(prompts["position_ids"], length, 2, left=True, value=1),
    }
    if patches:
        if "pixel_values" not in prompts:
            raise ValueError("cannot mix prompts with and without images in one batch.")
        for key in ("pixel_values", "patch_rows", "patch_cols"):
            out[key] = _pad_to(prompts[key], patches, 1, left=False)
        for key in ("frame_segments", "window_segments"):
            out[key] = _pad_to(prompts[key], patches, 1, left=False, value=PAD_SEGMENT)
        out["image_grid_thw"] = _pad_to(prompts["image_grid_thw"], images, 1, left=False)
    return out


# ------------------------------------------------------------------------- device: prefill
def prompt_embeddings(
    model, prompts: dict[str, jax.Array], *, remat: bool | str = False, query_chunk=None
) -> jax.Array:
    """[B, P, H] input embeddings of padded prompts, image features in their image slots.

    The vision tower runs per prompt (`vmap`), so a prompt's patches attend only within their
    own row and the computation shards with the batch.
    """
    ids = prompts["input_ids"]
    embeds = model.model.embed_tokens(ids)
    if "pixel_values" not in prompts:
        return embeds
    features = jax.vmap(
        lambda *layout: model.image_features(*layout, remat=remat, query_chunk=query_chunk)
    )(
        prompts["pixel_values"],
        prompts["patch_rows"],
        prompts["patch_cols"],
        prompts["frame_segments"],
        prompts["window_segments"],
    )  # [B, N/4, H]
    is_image = ids == model.config.image_token_id
    index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)
    gathered = jnp.take_along_axis(features, index[..., None], axis=1)
    return jnp.where(is_image[..., None], gathered.astype(embeds.dtype), embeds)


def next_positions(attention_mask: jax.Array, position_ids: jax.Array) -> jax.Array:
    """[B] M-RoPE position of each prompt's first completion token: its last real position + 1
    (decoding continues every row's positions from there, as HF does)."""
    real = attention_mask[:, None] > 0
    return jnp.max(jnp.where(real, position_ids, -1), axis=(1, 2)) + 1


def _unconstrained(x):
    return x


def prompt_states(
    model,
    prompts: dict[str, jax.Array],
    *,
    cache_size: int | None = None,
    remat: bool | str = False,
    query_chunk: int | None = None,
    constrain=_unconstrained,
) -> dict:
    """Runs the vision tower and the decoder over each prompt once (the prefill).

    Args:
        model: the merged `QwenVL`.
        prompts: batch-major prompts (module docstring).
        cache_size: KV-cache slots (default: the prompt length P); the sampler asks for
            P + its new tokens, and slots past P stay empty for decoding.
        remat, query_chunk: the train step's memory levers (`StepConfig.remat`,
            `StepConfig.attention_chunk`).
        constrain: pins batch-major activations to the step's batch sharding (the embedding
            lookup would otherwise hand them over sharded like the table, along the hidden axis).

    Returns:
        {"last_hidden": [B, H] final hidden state of the last prompt position (it predicts the
        first completion token), "kv": per layer {"k", "v"} with cache_size slots
        (`text.LayerCache`)}.
    """
    mask = prompts["attention_mask"]
    batch, length = mask.shape
    cache_size = length if cache_size is None else cache_size
    attention = causal_mask(mask)
    if cache_size > length:
        attention = jnp.pad(attention, ((0, 0), (0, 0), (0, cache_size - length)))
    hidden, cache = model.model(
        constrain(prompt_embeddings(model, prompts, remat=remat, query_chunk=query_chunk)),
        prompts["position_ids"].swapaxes(0, 1),
        attention,
        model.init_cache(batch, cache_size),
        0,
        remat=remat,
        query_chunk=query_chunk,
    )
    return {"last_hidden": hidden[:, -1], "kv": cache}
