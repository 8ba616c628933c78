"""Every paper config builds, states its launch commands and the paper's numbers, has the real
policy's shapes (`jax.eval_shape`, nothing allocated), and runs one GRPO step with the tiny
model and synthetic data swapped in."""

import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perception_rl.models.qwen_vl import QwenVL, preset
from perception_rl.models.qwen_vl.model import default_position_ids, vision_layout_dict

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = {
    "pr1/grounding": ("qwen2_vl_2b", "grounding"),
    "pr1/counting": ("qwen2_vl_2b", "counting"),
    "pr1/ocr": ("qwen2_vl_2b", "ocr"),
    "pr1/detection": ("qwen2p5_vl_3b", "detection"),
    "dip_r1/crowdhuman": ("qwen2p5_vl_3b", "crowd"),
    "dip_r1/citypersons": ("qwen2p5_vl_3b", "crowd"),
    "dip_r1/wider_pedestrian": ("qwen2p5_vl_3b", "crowd"),
}
# Parameter counts of the released checkpoints (qwen_vl_port.md §7).
RELEASED = {"qwen2_vl_2b": 2_208_985_600, "qwen2p5_vl_3b": 3_754_622_976}


def load(name: str):
    path = ROOT / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name.replace("/", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_builds_with_the_papers_settings(name):
    module = load(name)
    model, task = CONFIGS[name]
    config = module.get_config()
    assert (config.model, config.task) == (model, task)
    assert module.get_config("/ckpt/base").model == "/ckpt/base"  # base checkpoint argument
    rl = config.rl
    assert (rl.num_generations, rl.beta, config.optim.learning_rate) == (8, 0.04, 1e-6)
    assert config.data.source == "tfds" and config.data.max_pixels == 1_000_000
    assert config.rl.prompts_per_step % 8 == 0  # an 8-chip slice or an 8-GPU box
    for _, values in config.protocol.paper:
        assert len(values) == len(config.protocol.columns)
    labels = {label for label, _, _ in config.protocol.splits}
    assert {label for label, _, _ in config.protocol.columns} <= labels
    doc = module.__doc__
    assert "TPU" in doc and "8-GPU" in doc and "Expected" in doc
    assert "protocol" in doc  # the evaluation command
    if name.startswith("dip_r1"):
        assert "UNKNOWN" in doc
        assert all(v is None for _, row in config.protocol.paper for v in row)


def test_grounding_decodes_with_pr1s_repetition_penalty():
    config = load("pr1/grounding").get_config()
    assert config.eval.repetition_penalty == 1.05 and config.eval.max_new_tokens == 512
    assert len(config.protocol.splits) == 8


def test_every_config_uses_a_shape_checked_preset():
    for name in CONFIGS:
        config = load(name).get_config()
        assert (config.model, config.dtype) in SHAPE_CHECKED, name


SHAPE_CHECKED = (("qwen2_vl_2b", "bfloat16"), ("qwen2p5_vl_3b", "bfloat16"))


@pytest.mark.parametrize("model, dtype", SHAPE_CHECKED)
def test_real_preset_shapes(model, dtype):
    """Parameters of a paper's policy and the activations of one prompt at the configs' pixel
    limit (1 M px), as shapes only (each preset once: the configs share two)."""
    model_config = preset(model)
    dtype = jnp.dtype(dtype)
    abstract = nnx.eval_shape(lambda: QwenVL(model_config, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract)
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert count == RELEASED[model]
    # One image at the pixel limit: 1000 x 1000 px -> a 70 x 70 patch grid (28 px per merge).
    grid = np.array([[1, 70, 70]])
    merged = int(np.prod(grid)) // 4
    ids = np.concatenate(
        [[11] * 5, [model_config.vision_start_token_id], [model_config.image_token_id] * merged]
        + [[model_config.vision_end_token_id], [12] * 20]
    )[None]

    mask = np.ones_like(ids)
    # Host-side inputs (M-RoPE positions, vision layout) are computed outside the trace.
    positions = np.asarray(default_position_ids(model_config, ids, mask, grid))
    num_patches = int(np.prod(grid))
    layout = vision_layout_dict(grid, model_config, num_patches)

    def forward(params, pixels):
        return nnx.merge(graphdef, params)(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            pixel_values=pixels,
            vision_layout=layout,
        )

    pixels = jax.ShapeDtypeStruct((num_patches, 1176), dtype)
    logits = jax.eval_shape(forward, params, pixels)
    assert logits.shape == (1, ids.shape[1], model_config.text.vocab_size)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_step_with_the_tiny_model(name, tmp_path):
    from perception_rl.rl import trainer

    config = load(name).get_config()
    family = preset(config.model).family
    config.model = "qwen2_vl_tiny" if family == "qwen2_vl" else "qwen2p5_vl_tiny"
    config.dtype = "float32"
    config.mesh_shape = (-1, 1, 1)
    config.data.source = "synthetic"
    config.data.num_examples = 8
    config.data.synthetic = {"min_size": 112, "max_size": 112, "max_text_lines": 1}
    config.data.buckets = (16,)
    config.rl.prompts_per_step = 8
    config.rl.num_generations = 2
    config.rl.max_new_tokens = 8
    config.train.num_steps = 1
    config.train.remat = False
    config.train.logprob_chunk = 16
    config.train.checkpoint_every = 1
    summary = trainer.train(config, str(tmp_path))
    assert summary["step"] == 1
    assert np.isfinite(summary["metrics"]["loss"])


@pytest.mark.parametrize(
    "task", ["grounding", "counting", "ocr", "detection", "crowdhuman", "citypersons"]
)
def test_reproduce_script_builds_trains_and_evaluates(task):
    import os
    import subprocess

    env = dict(os.environ, DRY_RUN="1", BASE="/base", RAW="/raw", WORKDIR="/run")
    result = subprocess.run(
        ["bash", "experiments/reproduce.sh", task],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert all(line.startswith("python -m perception_rl.data.build") for line in lines[:-2])
    config = lines[-2].split("--config=")[1].split(":")[0]
    assert (ROOT / config).is_file()
    assert "--mode=train" in lines[-2]
    assert lines[-1].startswith("python -m perception_rl.eval.protocol")
    assert "--checkpoint=/run/checkpoints" in lines[-1]


def test_training_reads_the_papers_first_examples(monkeypatch):
    import grain

    from perception_rl.data import pipeline
    from perception_rl.rl import runtime
    from perception_rl.tasks import get_task

    config = load("pr1/grounding").get_config()
    assert config.data.first_examples == 5000  # PR1: the first 5,000 of refcoco_320k
    assert load("pr1/detection").get_config().data.first_examples is None  # every image
    built = grain.MapDataset.range(7000)
    monkeypatch.setattr(pipeline, "tfds_source", lambda name, split, data_dir: built)
    source = runtime.training_source(config, get_task(config.task))
    assert len(source) == 5000 and source[4999] == 4999
