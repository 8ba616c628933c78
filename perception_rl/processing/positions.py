"""M-RoPE position ids for Qwen2-VL / Qwen2.5-VL prompts (host numpy, port notes §2.3-2.4).

Identical to HF transformers 5.x `get_rope_index`: positions are computed on each row with padding
removed; a text token advances the counter by one on all three axes (temporal, height, width); a
run of `t*h'*w'` vision tokens (merged grid `h' = h/m`, `w' = w/m`) gets `(cur + tpos(τ),
cur + i, cur + j)` in raster order and advances the counter by `max(h', w')`. Pad slots hold 0 and
`rope_delta = max(position) + 1 - n_valid` (5.x convention), so the k-th generated token has
position `n_valid + k + rope_delta` on every axis.

The whole batch is handled at once on the flattened valid tokens: runs are found by comparing
neighbours, grids are matched to vision runs in row-major order, and offsets come from cumsums.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
_TEXT, _IMAGE, _VIDEO = 0, 1, 2


def get_rope_index(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    image_grid_thw: np.ndarray | None,
    *,
    image_token_id: int,
    video_token_id: int,
    spatial_merge_size: int,
    video_grid_thw: np.ndarray | None = None,
    second_per_grid_ts: Sequence[float] | None = None,
    tokens_per_second: float = 2,
    model_type: str = "qwen2_vl",
) -> tuple[np.ndarray, np.ndarray]:
    """3-D rotary positions and rope deltas of a (padded) prompt batch.

    Args:
        input_ids: int `[B, L]` token ids; each image/video is a run of its pad token.
        attention_mask: `[B, L]`, 1 for real tokens, 0 for padding (any side); None = all real.
        image_grid_thw: int `[n_images, 3]` patch grids, in row-major order of appearance.
        image_token_id: Id of `<|image_pad|>`.
        video_token_id: Id of `<|video_pad|>`.
        spatial_merge_size: Merge window side m of the vision tower.
        video_grid_thw: int `[n_videos, 3]`, like `image_grid_thw`.
        second_per_grid_ts: Seconds per temporal grid step of each video (Qwen2.5-VL only;
            default 1 each).
        tokens_per_second: Qwen2.5-VL `vision_config.tokens_per_second` (2 in the checkpoints).
        model_type: "qwen2_vl" (video time index = frame step) or "qwen2_5_vl" (video time
            index = floor(step * tokens_per_second * second_per_grid_t)).

    Returns:
        `position_ids` int32 `[3, B, L]` (pads 0) and `rope_deltas` int32 `[B]` (a row without
        real tokens gets delta 0).

    Raises:
        ValueError: On a model type, shape or grid count that does not fit the tokens.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    if attention_mask is None:
        attention_mask = np.ones_like(input_ids)
    attention_mask = np.asarray(attention_mask)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")

    batch, length = input_ids.shape
    rows, cols = np.nonzero(attention_mask)  # row-major: the order HF consumes grids in
    ids = input_ids[rows, cols]
    kinds = np.where(ids == image_token_id, _IMAGE, np.where(ids == video_token_id, _VIDEO, _TEXT))

    # Runs of equal kind inside one row (HF groups the unpadded row with itertools.groupby).
    starts = np.ones(len(ids), bool)
    starts[1:] = (kinds[1:] != kinds[:-1]) | (rows[1:] != rows[:-1])
    run_of_token = np.cumsum(starts) - 1
    run_first = np.flatnonzero(starts)
    run_len = np.diff(np.append(run_first, len(ids)))
    run_kind, run_row = kinds[run_first], rows[run_first]

    # Per vision run: merged grid (t, h', w') and the time step between frames.
    grids = np.zeros((len(run_first), 3), np.int64)
    interval = np.ones(len(run_first), np.float32)
    _assign_grids(grids, run_kind == _IMAGE, image_grid_thw, "image", spatial_merge_size)
    _assign_grids(grids, run_kind == _VIDEO, video_grid_thw, "video", spatial_merge_size)
    is_vision = run_kind != _TEXT
    expected = grids[:, 0] * grids[:, 1] * grids[:, 2]
    bad = is_vision & (run_len != expected)
    if bad.any():
        r = np.flatnonzero(bad)[0]
        raise ValueError(
            f"row {run_row[r]}: a run of {run_len[r]} vision tokens does not match its grid "
            f"(merged t*h*w = {expected[r]}); each image needs t*h*w/merge_size**2 pad tokens"
        )
    if model_type == "qwen2_5_vl":
        is_video = run_kind == _VIDEO
        seconds = np.ones(is_video.sum()) if second_per_grid_ts is None else np.asarray(second_per_grid_ts)
        if len(seconds) < is_video.sum():
            raise ValueError(f"{is_video.sum()} videos but {len(seconds)} second_per_grid_ts values")
        # float32, like HF's `(arange(t) * time_interval).long()` in torch.
        interval[is_video] = (tokens_per_second * seconds[: is_video.sum()]).astype(np.float32)

    # Counter value at each run start: exclusive cumsum of advances, restarted on every row.
    advance = np.where(is_vision, np.maximum(grids[:, 1], grids[:, 2]), run_len)
    cum = np.cumsum(advance) - advance
    first_of_row = np.ones(len(run_first), bool)
    first_of_row[1:] = run_row[1:] != run_row[:-1]
    row_base = np.zeros(batch, np.int64)
    row_base[run_row[first_of_row]] = cum[first_of_row]
    run_start = cum - row_base[run_row]

    # Per token: offset k inside its run -> (t, h, w) offsets.
    k = np.arange(len(ids)) - run_first[run_of_token]
    tok_grid = grids[run_of_token]
    hw = np.maximum(tok_grid[:, 1] * tok_grid[:, 2], 1)
    step = k // hw
    t_off = (step.astype(np.float32) * interval[run_of_token]).astype(np.int64)
    h_off = (k // np.maximum(tok_grid[:, 2], 1)) % np.maximum(tok_grid[:, 1], 1)
    w_off = k % np.maximum(tok_grid[:, 2], 1)
    vision_token = is_vision[run_of_token]
    offsets = np.where(vision_token, np.stack([t_off, h_off, w_off]), k)
    positions = run_start[run_of_token] + offsets

    position_ids = np.zeros((3, batch, length), np.int32)
    position_ids[:, rows, cols] = positions
    row_max = np.full(batch, -1, np.int64)
    np.maximum.at(row_max, rows, positions.max(axis=0))
    n_valid = np.bincount(rows, minlength=batch)
    rope_deltas = np.where(n_valid > 0, row_max + 1 - n_valid, 0).astype(np.int32)
    return position_ids, rope_deltas


def _assign_grids(
    grids: np.ndarray,
    is_run: np.ndarray,
    grid_thw: np.ndarray | None,
    name: str,
    spatial_merge_size: int,
) -> None:
    """Writes merged `(t, h/m, w/m)` of the n-th `name` grid into the n-th `name` run."""
    grid_thw = np.zeros((0, 3), np.int64) if grid_thw is None else np.asarray(grid_thw, np.int64)
    if grid_thw.ndim != 2 or grid_thw.shape[1] != 3:
        raise ValueError(f"{name}_grid_thw must be [n, 3], got shape {grid_thw.shape}")
    if is_run.sum() != len(grid_thw):
        raise ValueError(
            f"found {is_run.sum()} {name} token runs in input_ids but {len(grid_thw)} {name} grids"
        )
    if (grid_thw[:, 1:] % spatial_merge_size).any():
        raise ValueError(f"{name} grid h and w must be multiples of spatial_merge_size={spatial_merge_size}, "
                         f"got {grid_thw.tolist()}")
    grids[is_run] = grid_thw // np.array([1, spatial_merge_size, spatial_merge_size])


def decode_positions(attention_mask: np.ndarray, rope_deltas: np.ndarray, num_steps: int) -> np.ndarray:
    """Positions of the tokens generated after a prompt (equal on all three M-RoPE axes).

    Args:
        attention_mask: `[B, L]` prompt mask (1 = real token).
        rope_deltas: `[B]` from `get_rope_index`.
        num_steps: Number of generated tokens.

    Returns:
        int32 `[B, num_steps]`: token k of row b sits at `n_valid[b] + k + rope_deltas[b]`.
    """
    n_valid = np.asarray(attention_mask).sum(axis=-1)
    return (n_valid[:, None] + np.arange(num_steps) + np.asarray(rope_deltas)[:, None]).astype(np.int32)
