"""Test setup: 8 virtual CPU devices for mesh tests, deterministic float32 maths."""

import os

# Must happen before jax is imported anywhere: mesh tests need 8 host devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module")
def processor():
    """The shipped tiny tokenizer's processor."""
    from perception_rl.processing import Processor, tiny_tokenizer_path

    return Processor.from_pretrained(tiny_tokenizer_path())


@pytest.fixture(scope="module")
def examples():
    """Three counting examples of different image sizes: prompts differ in length and patches."""
    from perception_rl.data import synthetic

    config = synthetic.SyntheticConfig(min_size=112, max_size=224)
    return [synthetic.generate_example("counting", i, config=config) for i in range(3)]
