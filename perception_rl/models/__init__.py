"""Models: the Qwen-VL policy and its Hugging Face checkpoint I/O."""

from perception_rl.models.hf_io import CheckpointError, from_pretrained, save_pretrained
from perception_rl.models.qwen_vl import QwenVL, QwenVLConfig, preset

__all__ = [
    "CheckpointError",
    "QwenVL",
    "QwenVLConfig",
    "from_pretrained",
    "preset",
    "save_pretrained",
]
