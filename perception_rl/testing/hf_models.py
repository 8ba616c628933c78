"""Tiny random Hugging Face Qwen-VL models and inputs for parity tests (torch CPU, fp32)."""

from __future__ import annotations

import numpy as np

IMAGE, VIDEO, VSTART, VEND = 10, 11, 12, 13
MROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}


def text_config(**overrides):
    cfg = {
        "vocab_size": 1000,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 512,
        "rope_parameters": MROPE,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
    }
    cfg.update(overrides)
    return cfg


def build_hf_model(
    family: str,
    seed: int = 0,
    tie: bool | None = None,
    *,
    vision: dict | None = None,
    noise: float = 0.05,
    **text_overrides,
):
    """A random HF model (float32, sdpa) of `family` ('qwen2_vl' or 'qwen2_5_vl').

    Tiny by default; `text_overrides` and `vision` (vision-config fields) resize it (the
    benchmark model is this builder at another size). `noise` is added to every weight.
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    ids = {
        "image_token_id": IMAGE,
        "video_token_id": VIDEO,
        "vision_start_token_id": VSTART,
        "vision_end_token_id": VEND,
    }
    if family == "qwen2_vl":
        config = Qwen2VLConfig(
            text_config=text_config(**text_overrides),
            vision_config={
                "depth": 2,
                "embed_dim": 32,
                "hidden_size": 64,
                "num_heads": 4,
                "mlp_ratio": 4,
                "hidden_act": "quick_gelu",
                "patch_size": 14,
                "temporal_patch_size": 2,
                "spatial_merge_size": 2,
                "in_channels": 3,
                **(vision or {}),
            },
            tie_word_embeddings=False if tie is None else tie,
            **ids,
        )
        cls = Qwen2VLForConditionalGeneration
    else:
        config = Qwen2_5_VLConfig(
            text_config=text_config(**text_overrides),
            vision_config={
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 48,
                "out_hidden_size": 64,
                "num_heads": 4,
                "hidden_act": "silu",
                "patch_size": 14,
                "temporal_patch_size": 2,
                "spatial_merge_size": 2,
                "in_channels": 3,
                "window_size": 56,
                "fullatt_block_indexes": [1],
                "tokens_per_second": 2,
                **(vision or {}),
            },
            tie_word_embeddings=True if tie is None else tie,
            **ids,
        )
        cls = Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    # Random init is tiny (std 0.02); larger weights make parity tests discriminative.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model.eval()


def multimodal_batch(
    seed: int = 0,
    grids=((1, 4, 6), (1, 10, 4), (1, 8, 8)),
    images_per_row=(0, 1, 2),
    text_lens=(7, 5, 4),
):
    """Left-padded ids [B, L] with `<vs> <image>×n <ve>` runs, plus random pixel_values."""
    rng = np.random.default_rng(seed)
    grid_iter = iter(grids)
    rows, used = [], []
    for n_img, n_text in zip(images_per_row, text_lens):
        row = list(rng.integers(20, 1000, n_text))
        for _ in range(n_img):
            t, h, w = next(grid_iter)
            used.append((t, h, w))
            row += [VSTART] + [IMAGE] * (t * h * w // 4) + [VEND] + list(rng.integers(20, 1000, 3))
        rows.append(row)
    length = max(map(len, rows))
    ids = np.full((len(rows), length), 2, np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = row
        mask[i, length - len(row) :] = 1
    grid = np.asarray(used, np.int64).reshape(-1, 3)
    pixels = rng.standard_normal((int(np.prod(grid, axis=1).sum()), 1176)).astype(np.float32)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": pixels,
        "image_grid_thw": grid,
    }


def hf_forward(model, batch):
    """HF logits [B, L, V], position ids [3, B, L] and image features for `batch`."""
    import torch

    t = {k: torch.as_tensor(v) for k, v in batch.items()}
    mm = (t["input_ids"] == IMAGE).long()
    with torch.no_grad():
        out = model(**t, mm_token_type_ids=mm)
        pos, _ = model.model.get_rope_index(
            t["input_ids"],
            mm_token_type_ids=mm,
            image_grid_thw=t["image_grid_thw"],
            attention_mask=t["attention_mask"],
        )
        feats = model.model.get_image_features(t["pixel_values"], t["image_grid_thw"])
    feats = getattr(feats, "pooler_output", feats)
    if isinstance(feats, (tuple, list)):
        feats = torch.cat(list(feats))
    return out.logits.numpy(), pos.numpy(), feats.numpy()
