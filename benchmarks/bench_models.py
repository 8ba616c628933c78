"""The benchmark model of the sampler and GRPO issues: the tests' HF model builder
(`perception_rl.testing.hf_models.build_hf_model`, torch CPU) at a larger size.

Qwen2.5-VL: text hidden 512, intermediate 1024, 8 layers, 4 heads, 2 KV heads, the tiny
tokenizer's ~1k vocabulary, tied embeddings; vision hidden 256, intermediate 512, depth 4,
2 heads, out_hidden 512, window 56, full-attention block 3. One 112×112 image per prompt.
"""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from perception_rl.processing import TINY_TOKEN_IDS, Processor, tiny_tokenizer_path

# The bench model's sizes: overrides of `perception_rl.testing.hf_models.build_hf_model`.
BENCH_TEXT = {
    "vocab_size": 1024,
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
}
BENCH_VISION = {
    "depth": 4,
    "hidden_size": 256,
    "intermediate_size": 512,
    "out_hidden_size": 512,
    "num_heads": 2,
    "fullatt_block_indexes": [3],
}


def build_bench_checkpoint(path: str, seed: int = 0) -> str:
    """Writes the bench model (HF classes, random weights) and the tiny tokenizer to `path`."""
    from perception_rl.testing.hf_models import build_hf_model

    ids = {k: TINY_TOKEN_IDS[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    model = build_hf_model(
        "qwen2_5_vl", seed, tie=True, vision=BENCH_VISION, noise=0.0, **BENCH_TEXT, **ids
    )
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
