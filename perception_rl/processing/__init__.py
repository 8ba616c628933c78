"""Host-side prompt processing for Qwen2-VL / Qwen2.5-VL: images, chat template, M-RoPE index."""

from perception_rl.processing.image import ImageProcessor, smart_resize
from perception_rl.processing.positions import decode_positions, get_rope_index
from perception_rl.processing.processor import Processor
from perception_rl.processing.tiny_tokenizer import (
    SPECIAL_TOKEN_IDS,
    TINY_TOKEN_IDS,
    tiny_tokenizer_path,
)

__all__ = [
    "SPECIAL_TOKEN_IDS",
    "TINY_TOKEN_IDS",
    "ImageProcessor",
    "Processor",
    "decode_positions",
    "get_rope_index",
    "smart_resize",
    "tiny_tokenizer_path",
]
