"""M-RoPE index parity with HF transformers' `get_rope_index` (both families)."""

import functools

import numpy as np
import pytest

from perception_rl.processing.positions import decode_positions, get_rope_index

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

IMAGE, VIDEO, V_START, V_END, PAD = 10, 11, 12, 13, 0
MERGE = 2
TOKENS_PER_SECOND = 2
TEXT = dict(
    vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
    num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=512,
    rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
    bos_token_id=0, eos_token_id=1, pad_token_id=0,
)  # fmt: skip
VISION = {
    "qwen2_vl": dict(depth=1, embed_dim=32, hidden_size=64, num_heads=4, spatial_merge_size=MERGE),
    "qwen2_5_vl": dict(
        depth=1, hidden_size=32, intermediate_size=48, out_hidden_size=64, num_heads=4, spatial_merge_size=MERGE,
        window_size=56, fullatt_block_indexes=[0], tokens_per_second=TOKENS_PER_SECOND,
    ),
}  # fmt: skip
FAMILIES = tuple(VISION)


@functools.cache
def hf_model(model_type):
    """A tiny HF Qwen2(.5)-VL model (only its get_rope_index is used)."""
    config = transformers.AutoConfig.for_model(
        model_type, text_config=TEXT, vision_config=VISION[model_type], image_token_id=IMAGE,
        video_token_id=VIDEO, vision_start_token_id=V_START, vision_end_token_id=V_END,
    )  # fmt: skip
    return transformers.AutoModel.from_config(config).eval()


def hf_rope_index(model_type, ids, mask, image_grid, video_grid=None, seconds=None):
    """HF's positions; mm_token_type_ids must be passed or 2.5 falls back to 1-D positions."""
    types = np.where(ids == IMAGE, 1, np.where(ids == VIDEO, 2, 0))
    kwargs = dict(
        input_ids=torch.tensor(ids, dtype=torch.long),
        mm_token_type_ids=torch.tensor(types, dtype=torch.int),
        image_grid_thw=None if image_grid is None else torch.tensor(image_grid),
        video_grid_thw=None if video_grid is None else torch.tensor(video_grid),
        attention_mask=None if mask is None else torch.tensor(mask),
    )
    if model_type == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = seconds
    positions, deltas = hf_model(model_type).get_rope_index(**kwargs)
    return positions.numpy(), deltas.numpy().reshape(-1)


def ours(model_type, ids, mask, image_grid, video_grid=None, seconds=None):
    return get_rope_index(
        ids, mask, image_grid, image_token_id=IMAGE, video_token_id=VIDEO, spatial_merge_size=MERGE,
        video_grid_thw=video_grid, second_per_grid_ts=seconds, tokens_per_second=TOKENS_PER_SECOND,
        model_type=model_type,
    )  # fmt: skip


def random_batch(rng, images_per_row, videos_per_row=None, padding_side="left"):
    """Token rows with text and wrapped vision runs, padded; returns ids, mask, grids."""
    videos_per_row = videos_per_row or [0] * len(images_per_row)
    rows, image_grids, video_grids = [], [], []
    for n_images, n_videos in zip(images_per_row, videos_per_row):
        kinds = rng.permutation([IMAGE] * n_images + [VIDEO] * n_videos)
        row = list(rng.integers(20, 1000, rng.integers(1, 6)))
        for kind in kinds:
            t = 1 if kind == IMAGE else int(rng.integers(2, 4))
            grid = [t, MERGE * int(rng.integers(1, 7)), MERGE * int(rng.integers(1, 7))]
            (image_grids if kind == IMAGE else video_grids).append(grid)
            row += [V_START] + [kind] * (np.prod(grid) // MERGE**2) + [V_END]
            row += list(rng.integers(20, 1000, rng.integers(0, 5)))
        rows.append(row)
    length = max(map(len, rows))
    ids = np.full((len(rows), length), PAD)
    mask = np.zeros((len(rows), length), np.int64)
    for b, row in enumerate(rows):
        span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
        ids[b, span], mask[b, span] = row, 1
    as_grid = lambda g: np.array(g, np.int64).reshape(-1, 3) if g else None
    return ids, mask, as_grid(image_grids), as_grid(video_grids)


def assert_same(ours_out, hf_out):
    np.testing.assert_array_equal(ours_out[0], hf_out[0])
    np.testing.assert_array_equal(ours_out[1], hf_out[1])
    assert ours_out[0].dtype == np.int32 and ours_out[1].dtype == np.int32


def test_port_notes_example():
    ids = np.array([[20, 21, V_START] + [IMAGE] * 6 + [V_END, 22, 23, 24]])
    positions, deltas = get_rope_index(
        ids,
        None,
        np.array([[1, 4, 6]]),
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        spatial_merge_size=MERGE,
    )
    assert positions[:, 0].tolist() == [
        [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7, 8, 9],
        [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7, 8, 9],
        [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9],
    ]
    assert deltas.tolist() == [-3]


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("seed", range(4))
def test_matches_hf_left_padded_images(model_type, seed):
    rng = np.random.default_rng(seed)
    ids, mask, grids, _ = random_batch(rng, [0, 1, 2, int(rng.integers(0, 4))])
    assert_same(ours(model_type, ids, mask, grids), hf_rope_index(model_type, ids, mask, grids))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_matches_hf_right_padding_and_no_mask(model_type):
    ids, mask, grids, _ = random_batch(np.random.default_rng(7), [2, 1, 0], padding_side="right")
    assert_same(ours(model_type, ids, mask, grids), hf_rope_index(model_type, ids, mask, grids))
    full = ids[:1, : mask[0].sum()]
    assert_same(
        ours(model_type, full, None, grids[:2]), hf_rope_index(model_type, full, None, grids[:2])
    )


@pytest.mark.parametrize("model_type", FAMILIES)
def test_matches_hf_text_only_batch(model_type):
    ids, mask, grids, _ = random_batch(np.random.default_rng(3), [0, 0])
    assert grids is None
    assert_same(ours(model_type, ids, mask, None), hf_rope_index(model_type, ids, mask, None))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_matches_hf_videos(model_type):
    """Videos: frame index (2-VL) vs floor(step * tokens_per_second * seconds) (2.5-VL)."""
    rng = np.random.default_rng(11)
    ids, mask, image_grid, video_grid = random_batch(rng, [1, 0, 1], videos_per_row=[1, 2, 0])
    seconds = [0.5, 2 / 3, 1.25][: len(video_grid)] if model_type == "qwen2_5_vl" else None
    assert_same(
        ours(model_type, ids, mask, image_grid, video_grid, seconds),
        hf_rope_index(model_type, ids, mask, image_grid, video_grid, seconds),
    )


def test_decode_positions_continue_after_the_prompt():
    ids, mask, grids, _ = random_batch(np.random.default_rng(5), [2, 0, 1])
    positions, deltas = ours("qwen2_vl", ids, mask, grids)
    steps = decode_positions(mask, deltas, 4)
    np.testing.assert_array_equal(steps[:, 0], positions.max(axis=(0, 2)) + 1)
    np.testing.assert_array_equal(np.diff(steps, axis=1), 1)


@pytest.mark.parametrize(
    ("grids", "n_tokens", "message"),
    [
        ([[1, 4, 4], [1, 2, 2]], 4, "1 image token runs in input_ids but 2 image grids"),
        ([[1, 4, 4]], 3, "run of 3 vision tokens does not match its grid"),
        ([[1, 3, 4]], 3, "multiples of spatial_merge_size=2"),
    ],
)
def test_bad_grids_are_named(grids, n_tokens, message):
    ids = np.array([[20, V_START] + [IMAGE] * n_tokens + [V_END]])
    with pytest.raises(ValueError, match=message):
        ours("qwen2_vl", ids, None, np.array(grids))


def test_bad_arguments_are_named():
    ids = np.array([[20, 21]])
    with pytest.raises(ValueError, match="model_type"):
        ours("qwen3_vl", ids, None, None)
    with pytest.raises(ValueError, match="attention_mask shape"):
        ours("qwen2_vl", ids, np.ones((1, 3)), None)
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, length\]"):
        ours("qwen2_vl", ids[0], None, None)
