"""perception_rl: rule-based GRPO for Qwen-VL perception, in JAX/Flax NNX."""

__version__ = "0.1.0"
