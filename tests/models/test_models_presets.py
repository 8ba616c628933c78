"""Presets reproduce the released checkpoints' parameter counts and config.json round-trips."""

import math

import jax
import pytest
from flax import nnx

from perception_rl.models.hf_io import abstract_model
from perception_rl.models.qwen_vl import QwenVLConfig, preset

# Counts from qwen_vl_port.md §7 (HF classes on the meta device; tied weights counted once).
RELEASED = {
    "qwen2_vl_2b": 2_208_985_600,
    "qwen2_vl_7b": 8_291_375_616,
    "qwen2p5_vl_3b": 3_754_622_976,
    "qwen2p5_vl_7b": 8_292_166_656,
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_preset_parameter_count_matches_release(name):
    model = abstract_model(preset(name), jax.numpy.bfloat16)
    params = nnx.state(model, nnx.Param)
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    assert count == RELEASED[name]


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_config_json_round_trip(name):
    config = preset(name)
    assert QwenVLConfig.from_hf_dict(config.to_hf_dict()) == config


def test_hub_style_flat_config_parses():
    """The 4.x hub layout: text fields at the top level, legacy rope_scaling, in_chans."""
    hub = {
        "model_type": "qwen2_5_vl",
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1e6,
        "max_position_embeddings": 128000,
        "tie_word_embeddings": True,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "use_sliding_window": False,
        "sliding_window": 32768,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_config": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "in_chans": 3,
            "out_hidden_size": 2048,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
        },
    }
    assert QwenVLConfig.from_hf_dict(hub) == preset("qwen2p5_vl_3b")
