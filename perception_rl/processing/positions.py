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
from typing import NamedTuple

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
        raise ValueError(
            f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}"
        )

    batch, length = input_ids.shape
    rows, cols = np.nonzero(attention_mask)  # row-major: the order HF consumes grids in
    ids = input_ids[rows, cols]
    kinds = np.where(ids == image_token_id, _IMAGE, np.where(ids == video_token_id, _VIDEO, _TEXT))
    runs = _find_runs(kinds, rows)
    grids = _run_grids(runs, image_grid_thw, video_grid_thw, spatial_merge_size)
    interval = np.ones(len(runs.first), np.float32)
    if model_type == "qwen2_5_vl":
        interval = _video_time_intervals(runs, second_per_grid_ts, tokens_per_second)
    positions = _token_positions(runs, grids, interval, batch)

    position_ids = np.zeros((3, batch, length), np.int32)
    position_ids[:, rows, cols] = positions
    row_max = np.full(batch, -1, np.int64)
    np.maximum.at(row_max, rows, positions.max(axis=0))
    n_valid = np.bincount(rows, minlength=batch)
    rope_deltas = np.where(n_valid > 0, row_max + 1 - n_valid, 0).astype(np.int32)
    return position_ids, rope_deltas


class _Runs(NamedTuple):
    """Maximal runs of equal token kind inside one row, over the flattened valid tokens."""

    of_token: np.ndarray  # run index of every token
    first: np.ndarray  # flat index of each run's first token
    length: np.ndarray
    kind: np.ndarray  # _TEXT, _IMAGE or _VIDEO
    row: np.ndarray  # batch row of each run


def _find_runs(kinds: np.ndarray, rows: np.ndarray) -> _Runs:
    """Groups tokens like HF's `itertools.groupby` over each unpadded row."""
    starts = np.ones(len(kinds), bool)
    starts[1:] = (kinds[1:] != kinds[:-1]) | (rows[1:] != rows[:-1])
    first = np.flatnonzero(starts)
    length = np.diff(np.append(first, len(kinds)))
    return _Runs(np.cumsum(starts) - 1, first, length, kinds[first], rows[first])


def _run_grids(
    runs: _Runs, image_grid_thw: np.ndarray | None, video_grid_thw: np.ndarray | None, merge: int
) -> np.ndarray:
    """Merged `(t, h/m, w/m)` grid of every run (zeros for text), checked against run lengths."""
    grids = np.zeros((len(runs.first), 3), np.int64)
    _assign_grids(grids, runs.kind == _IMAGE, image_grid_thw, "image", merge)
    _assign_grids(grids, runs.kind == _VIDEO, video_grid_thw, "video", merge)
    bad = (runs.kind != _TEXT) & (runs.length != grids.prod(axis=1))
    if bad.any():
        r = np.flatnonzero(bad)[0]
        raise ValueError(
            f"row {runs.row[r]}: a run of {runs.length[r]} vision tokens does not match its grid "
            f"(merged t*h*w = {grids[r].prod()}); each image needs t*h*w/merge_size**2 pad tokens"
        )
    return grids


def _video_time_intervals(
    runs: _Runs, second_per_grid_ts: Sequence[float] | None, tokens_per_second: float
) -> np.ndarray:
    """Qwen2.5-VL temporal position step per run: tokens_per_second * seconds for videos, else 1."""
    is_video = runs.kind == _VIDEO
    n_videos = int(is_video.sum())
    seconds = (
        np.ones(n_videos)
        if second_per_grid_ts is None
        else np.asarray(second_per_grid_ts, np.float64)
    )
    if len(seconds) < n_videos:
        raise ValueError(f"{n_videos} videos but {len(seconds)} second_per_grid_ts values")
    interval = np.ones(len(runs.first), np.float32)
    # float32, like HF's `(arange(t) * time_interval).long()` in torch.
    interval[is_video] = (tokens_per_second * seconds[:n_videos]).astype(np.float32)
    return interval


def _token_positions(
    runs: _Runs, grids: np.ndarray, interval: np.ndarray, batch: int
) -> np.ndarray:
    """`[3, n_tokens]` positions: run start counter plus the token's offset inside its run."""
    # Counter at each run start: exclusive cumsum of advances, restarted on every row.
    is_vision = runs.kind != _TEXT
    advance = np.where(is_vision, np.maximum(grids[:, 1], grids[:, 2]), runs.length)
    cum = np.cumsum(advance) - advance
    first_of_row = np.ones(len(runs.first), bool)
    first_of_row[1:] = runs.row[1:] != runs.row[:-1]
    row_base = np.zeros(batch, np.int64)
    row_base[runs.row[first_of_row]] = cum[first_of_row]
    run_start = cum - row_base[runs.row]

    # Offset k inside the run; vision tokens unravel k into (frame, row, column) of their grid.
    run = runs.of_token
    k = np.arange(len(run)) - runs.first[run]
    _, height, width = np.maximum(grids[run], 1).T  # 1s for text runs avoid dividing by 0
    t_off = ((k // (height * width)).astype(np.float32) * interval[run]).astype(np.int64)
    offsets = np.where(is_vision[run], np.stack([t_off, (k // width) % height, k % width]), k)
    return run_start[run] + offsets


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
        raise ValueError(
            f"{name} grid h and w must be multiples of spatial_merge_size={spatial_merge_size}, "
            f"got {grid_thw.tolist()}"
        )
    grids[is_run] = grid_thw // np.array([1, spatial_merge_size, spatial_merge_size])


def decode_positions(
    attention_mask: np.ndarray, rope_deltas: np.ndarray, num_steps: int
) -> np.ndarray:
    """Positions of the tokens generated after a prompt (equal on all three M-RoPE axes).

    Args:
        attention_mask: `[B, L]` prompt mask (1 = real token).
        rope_deltas: `[B]` from `get_rope_index`.
        num_steps: Number of generated tokens.

    Returns:
        int32 `[B, num_steps]`: token k of row b sits at `n_valid[b] + k + rope_deltas[b]`.
    """
    n_valid = np.asarray(attention_mask).sum(axis=-1)
    return (n_valid[:, None] + np.arange(num_steps) + np.asarray(rope_deltas)[:, None]).astype(
        np.int32
    )
