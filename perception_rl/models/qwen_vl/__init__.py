"""Flax NNX port of Qwen2-VL and Qwen2.5-VL."""

from perception_rl.models.qwen_vl.config import (
    PRESETS,
    ConfigError,
    QwenVLConfig,
    TextConfig,
    VisionConfig,
    preset,
    tiny,
)
from perception_rl.models.qwen_vl.model import QwenVL
from perception_rl.models.qwen_vl.vision import vision_layout

__all__ = [
    "PRESETS",
    "ConfigError",
    "QwenVL",
    "QwenVLConfig",
    "TextConfig",
    "VisionConfig",
    "preset",
    "tiny",
    "vision_layout",
]
