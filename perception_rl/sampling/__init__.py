"""The rollout engine: jitted KV-cache sampling for multimodal prompts."""

from perception_rl.sampling.sampler import SampleResult, generate

__all__ = ["SampleResult", "generate"]
