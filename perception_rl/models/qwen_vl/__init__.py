"""Flax NNX port of Qwen2-VL and Qwen2.5-VL."""

from perception_rl.models.qwen_vl.config import (
    ConfigError,
    QwenVLConfig,
    TextConfig,
    tiny,
    VisionConfig,
    preset,
    PRESETS,
)
from perception_rl.models.qwen_vl.model import QwenVL
from perception_rl.models.qwen_vl.vision import vision_layout
