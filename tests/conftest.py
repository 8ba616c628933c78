"""Test setup: 8 virtual CPU devices for mesh tests, deterministic float32 maths."""

import os

# Must happen before jax is imported anywhere: mesh tests need 8 host devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax

jax.config.update("jax_default_matmul_precision", "highest")
