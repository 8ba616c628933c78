"""Shared by tests/ and benchmarks/, never by the runtime: tiny random Hugging Face Qwen-VL
models (`hf_models`, needs the `[test]` extra's torch and transformers) and the plain-Python
reference rewards the batched rewards are checked and timed against (`reference_rewards`)."""
