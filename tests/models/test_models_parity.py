"""The NNX port against HF transformers (torch CPU, float32) on tiny random checkpoints."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perception_rl.models import CheckpointError, from_pretrained, save_pretrained
from perception_rl.models.qwen_vl import ConfigError
from perception_rl.models.qwen_vl.model import vision_layout_dict
from perception_rl.parallel import make_mesh
from perception_rl.testing import hf_models

FAMILIES = ["qwen2_vl", "qwen2_5_vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def hf_checkpoint(request, tmp_path_factory):
    """(family, directory, HF model, batch, HF outputs) for one tiny random checkpoint."""
    family = request.param
    model = hf_models.build_hf_model(family)
    path = str(tmp_path_factory.mktemp(family))
    model.save_pretrained(path)
    batch = hf_models.multimodal_batch()
    return family, path, model, batch, hf_models.hf_forward(model, batch)


def _valid(batch):
    return batch["attention_mask"].astype(bool)


def test_vision_features_match_hf(hf_checkpoint):
    _, path, _, batch, (_, _, hf_feats) = hf_checkpoint
    model = from_pretrained(path)
    layout = vision_layout_dict(batch["image_grid_thw"], model.config)
    feats = model.image_features(jnp.asarray(batch["pixel_values"]), **layout)
    np.testing.assert_allclose(np.asarray(feats), hf_feats, atol=1e-5, rtol=0)


def test_logits_match_hf(hf_checkpoint):
    family, path, _, batch, (hf_logits, hf_pos, _) = hf_checkpoint
    model = from_pretrained(path)
    logits = np.asarray(model(**batch, position_ids=jnp.asarray(hf_pos)))
    assert logits.shape == hf_logits.shape
    diff = np.abs(logits - hf_logits)[_valid(batch)].max()
    assert diff <= 1e-4, f"{family}: max |logit diff| {diff}"


def test_logits_match_hf_with_own_positions(hf_checkpoint):
    """Without given position ids the model derives them on the host like HF's get_rope_index."""
    _, path, _, batch, (hf_logits, _, _) = hf_checkpoint
    model = from_pretrained(path)
    logits = np.asarray(model(**batch))
    assert np.abs(logits - hf_logits)[_valid(batch)].max() <= 1e-4


def test_round_trip_through_transformers(hf_checkpoint, tmp_path):
    """from_pretrained → save_pretrained → transformers loads it → same logits."""
    import torch
    from transformers import AutoModelForImageTextToText

    _, path, _, batch, (hf_logits, _, _) = hf_checkpoint
    save_pretrained(from_pretrained(path), str(tmp_path))
    reloaded = AutoModelForImageTextToText.from_pretrained(
        str(tmp_path), dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    logits, _, _ = hf_models.hf_forward(reloaded, batch)
    np.testing.assert_allclose(logits[_valid(batch)], hf_logits[_valid(batch)], atol=1e-5, rtol=0)


def test_bf16_params_stay_close_to_fp32(hf_checkpoint):
    _, path, _, batch, (hf_logits, hf_pos, _) = hf_checkpoint
    model = from_pretrained(path, dtype=jnp.bfloat16)
    assert model.dtype == jnp.bfloat16
    logits = np.asarray(model(**batch, position_ids=jnp.asarray(hf_pos)), np.float32)
    valid = _valid(batch)
    # Measured: max |diff| 0.020, mean 0.003, for logits of std 0.44 (bf16 keeps 8 mantissa
    # bits; float32 accumulation, norms and softmax); the argmax agrees on 95-100% of tokens.
    diff = np.abs(logits - hf_logits)[valid]
    assert diff.max() < 0.05 and diff.mean() < 0.01
    agree = (logits.argmax(-1) == hf_logits.argmax(-1))[valid].mean()
    assert agree > 0.9


def test_sharded_load_equals_unsharded(hf_checkpoint):
    _, path, _, batch, _ = hf_checkpoint
    mesh = make_mesh((2, 2, 2))
    sharded = from_pretrained(path, mesh=mesh)
    q = sharded.model.layers[0].self_attn.q_proj.kernel[...]
    assert len(q.sharding.device_set) == 8 and not q.sharding.is_fully_replicated
    assert q.addressable_shards[0].data.shape == (32, 32)  # (fsdp=2, tensor=2) on (64, 64)
    expected = np.asarray(from_pretrained(path)(**batch))
    # Inside jit everything derived from the (host) grid is passed explicitly.
    inputs = {k: v for k, v in batch.items() if k != "image_grid_thw"}
    inputs["position_ids"] = sharded_positions(sharded, batch)
    inputs["vision_layout"] = vision_layout_dict(batch["image_grid_thw"], sharded.config)
    got = np.asarray(jax.jit(lambda b: sharded(**b))(inputs))
    np.testing.assert_allclose(got[_valid(batch)], expected[_valid(batch)], atol=1e-5, rtol=0)


def sharded_positions(model, batch):
    from perception_rl.models.qwen_vl.model import default_position_ids

    return default_position_ids(
        model.config, batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"]
    )


def test_tied_checkpoint_without_lm_head_and_index_shards(tmp_path):
    """A tied model saved without lm_head, re-sharded into several files with an index."""
    model = hf_models.build_hf_model("qwen2_5_vl", tie=True)
    model.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(str(tmp_path / "hf"))
    save_pretrained(ours, str(tmp_path / "sharded"), max_shard_bytes=200_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    reloaded = from_pretrained(str(tmp_path / "sharded"))
    batch = hf_models.multimodal_batch()
    np.testing.assert_array_equal(np.asarray(reloaded(**batch)), np.asarray(ours(**batch)))


def test_bf16_checkpoint_files_load(tmp_path):
    import torch

    model = hf_models.build_hf_model("qwen2_vl").to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    ours = from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
    ref = model.model.language_model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_array_equal(
        np.asarray(ours.model.embed_tokens.embedding[...], np.float32), ref
    )


def test_new_key_layout_loads(tmp_path):
    """`model.visual.*` / `model.language_model.*` keys (in-memory layout of transformers ≥4.52)."""
    from safetensors.torch import save_file

    model = hf_models.build_hf_model("qwen2_vl")
    model.save_pretrained(tmp_path / "hub")
    os.makedirs(tmp_path / "new")
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(tmp_path / "new" / "model.safetensors"),
    )
    os.link(tmp_path / "hub" / "config.json", tmp_path / "new" / "config.json")
    assert any(k.startswith("model.language_model.") for k in model.state_dict())
    batch = hf_models.multimodal_batch()
    a = from_pretrained(str(tmp_path / "hub"))(**batch)
    b = from_pretrained(str(tmp_path / "new"))(**batch)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved")
    hf_models.build_hf_model("qwen2_5_vl").save_pretrained(path)
    return path


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_shard_names_the_file(saved_dir, tmp_path):
    d = _copy(saved_dir, tmp_path / "c")
    (d / "model.safetensors").rename(d / "part-1.safetensors")
    index = {
        "weight_map": {
            "model.norm.weight": "part-1.safetensors",
            "visual.merger.ln_q.weight": "part-2.safetensors",
        }
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="part-2.safetensors.*missing"):
        from_pretrained(str(d))


def test_unsupported_model_type_names_it(saved_dir, tmp_path):
    d = _copy(saved_dir, tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llava"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="config.json.*'llava'"):
        from_pretrained(str(d))


def test_wrong_shape_names_key_and_expected(saved_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = _copy(saved_dir, tmp_path / "c")
    tensors = load_file(str(d / "model.safetensors"))
    tensors["model.layers.1.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(
        CheckpointError,
        match=r"model.layers.1.self_attn.k_proj.weight.*\(16, 64\).*"
        r"expects \(32, 64\)",
    ):
        from_pretrained(str(d))
