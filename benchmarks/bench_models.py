"""The benchmark model of the sampler and GRPO issues, built with HF classes (torch CPU).

Qwen2.5-VL: text hidden 512, intermediate 1024, 8 layers, 4 heads, 2 KV heads, the tiny
tokenizer's ~1k vocabulary, tied embeddings; vision hidden 256, intermediate 512, depth 4,
2 heads, out_hidden 512, window 56, full-attention block 3. One 112×112 image per prompt.
"""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from perception_rl.processing import TINY_TOKEN_IDS, Processor, tiny_tokenizer_path


def build_bench_checkpoint(path: str, seed: int = 0) -> str:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = dict(TINY_TOKEN_IDS)
    text = dict(
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
        bos_token_id=ids.pop("bos_token_id"),
        eos_token_id=ids.pop("eos_token_id"),
        pad_token_id=ids.pop("pad_token_id"),
    )
    vision = dict(
        depth=4,
        hidden_size=256,
        intermediate_size=512,
        out_hidden_size=512,
        num_heads=2,
        hidden_act="silu",
        patch_size=14,
        temporal_patch_size=2,
        spatial_merge_size=2,
        in_channels=3,
        window_size=56,
        fullatt_block_indexes=[3],
        tokens_per_second=2,
    )
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=True, **ids
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    for f in tiny_tokenizer_path().iterdir():
        shutil.copy(f, path)
    return path


def bench_prompts(path: str, batch_size: int, seed: int = 0) -> dict:
    """A left-padded processor batch: one random 112×112 image and a counting prompt each."""
    rng = np.random.default_rng(seed)
    processor = Processor.from_pretrained(path)
    labels = ["red circle", "blue square", "green triangle", "yellow star"]
    conversations, images = [], []
    for i in range(batch_size):
        text = f"Output all the bounding boxes of the {labels[i % len(labels)]}"
        conversations.append(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        )
        images.append([Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))])
    return processor(conversations, images)
