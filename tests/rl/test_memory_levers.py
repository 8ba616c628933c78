"""Memory levers (README "Will it fit?") that must not change the numbers: rematerialisation
policies, chunked attention, and the optimiser-moment dtype when it equals the parameters'."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from perception_rl.data import synthetic
from perception_rl.models.qwen_vl import QwenVL, tiny
from perception_rl.models.qwen_vl import layers as layers_lib
from perception_rl.models.qwen_vl import prompts as prompts_lib
from perception_rl.parallel import hosts, make_mesh
from perception_rl.processing import TINY_TOKEN_IDS, Processor, tiny_tokenizer_path
from perception_rl.rl import batch as batch_lib
from perception_rl.rl.train_step import StepConfig, TrainStep, make_optimizer
from perception_rl.tasks import get_task

PROMPTS, GROUP, LENGTH = 2, 2, 16


@pytest.mark.parametrize("length, chunk", [(24, 8), (23, 8), (5, 8)])
def test_chunked_attention_equals_one_piece(length, chunk):
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, length, 2, 3, 8))  # [B, Lq, Hkv, R, D]
    k = jax.random.normal(keys[1], (2, length, 2, 8))
    v = jax.random.normal(keys[2], (2, length, 2, 8))
    causal = jnp.tril(jnp.ones((length, length), bool))[None, None, None]  # [1, 1, 1, Lq, Lk]
    row = jnp.ones((1, 1, 1, 1, length), bool)  # one mask row for every query
    for mask in (causal, row):
        full = layers_lib.masked_attention(q, k, v, mask)
        chunked = layers_lib.masked_attention(q, k, v, mask, query_chunk=chunk)
        np.testing.assert_allclose(chunked, full, atol=1e-6)
        grad = lambda c, m=mask: jax.grad(
            lambda q: layers_lib.masked_attention(q, k, v, m, query_chunk=c).sum()
        )(q)
        np.testing.assert_allclose(grad(chunk), grad(None), atol=1e-5)


@pytest.fixture(scope="module")
def setup():
    config = tiny("qwen2_5_vl", **TINY_TOKEN_IDS)
    graphdef, params = nnx.split(QwenVL(config, rngs=nnx.Rngs(0)), nnx.Param)
    params = nnx.to_pure_dict(params)
    processor = Processor.from_pretrained(tiny_tokenizer_path())
    formatter = batch_lib.PromptFormatter(get_task("ocr"), processor, "qwen2_5_vl", config.vision)
    records = [formatter(synthetic.generate_example("ocr", i)) for i in range(PROMPTS)]
    rng = np.random.default_rng(0)
    rows = PROMPTS * GROUP
    lengths = rng.integers(1, LENGTH + 1, rows)
    completions = {
        "tokens": rng.integers(14, 1000, (rows, LENGTH)).astype(np.int32),
        "mask": batch_lib.length_mask(lengths, LENGTH),
        "advantages": rng.normal(size=rows).astype(np.float32),
        "ref_logps": rng.normal(scale=0.1, size=(rows, LENGTH)).astype(np.float32) - 7.0,
    }
    prompts = prompts_lib.pad_prompts([r["prompt"] for r in records], pad_id=0)
    return graphdef, params, {"prompts": prompts, "completions": completions}


def gradients(setup, **settings):
    graphdef, params, batch = setup
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    schedule = optax.constant_schedule(0.1)
    config = StepConfig(group_size=GROUP, logprob_chunk=8, **settings)
    step = TrainStep(graphdef, params, config, optax.sgd(schedule), schedule, mesh)
    placed = hosts.global_arrays(batch, step.batch_sharding)
    grads, terms = jax.jit(step.gradients)(params, placed)
    return jax.device_get((grads, terms.loss, step.logprobs(params, placed)))


@pytest.fixture(scope="module")
def reference(setup):
    return gradients(setup)


@pytest.mark.parametrize(
    "settings",
    [
        {"remat": "save_dots"},
        {"remat": "per_layer", "attention_chunk": 8, "num_micro_batches": 2},
    ],
    ids=["save_dots", "per_layer_chunked_micro_batches"],
)
def test_levers_leave_gradients_unchanged(setup, reference, settings):
    other = gradients(setup, **settings)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6), reference, other
    )


def test_remat_policy_names():
    assert layers_lib.remat_policy(False) == "none"
    assert layers_lib.remat_policy(True) == "per_layer"
    assert layers_lib.remat_policy("save_dots") == "save_dots"
    with pytest.raises(ValueError, match="remat='everything'"):
        layers_lib.remat_policy("everything")


def test_moment_dtype():
    params = {"w": jnp.ones((4,), jnp.bfloat16)}
    grads = {"w": jnp.full((4,), 0.5, jnp.bfloat16)}
    schedule = optax.constant_schedule(1e-2)
    plain = make_optimizer(schedule)
    wide = make_optimizer(schedule, moment_dtype="float32")
    state = wide.init(params)
    moments = [x for x in jax.tree.leaves(state) if getattr(x, "shape", ()) == (4,)]
    assert moments and all(m.dtype == jnp.float32 for m in moments)
    updates, _ = wide.update(grads, state, params)
    assert updates["w"].dtype == jnp.bfloat16
    # Same numbers as optax's own AdamW when the moment dtype is the parameters' dtype.
    f32 = jax.tree.map(lambda x: x.astype(jnp.float32), (params, grads))
    same = make_optimizer(schedule, moment_dtype="float32")
    a, _ = plain.update(f32[1], plain.init(f32[0]), f32[0])
    b, _ = same.update(f32[1], same.init(f32[0]), f32[0])
    np.testing.assert_array_equal(a["w"], b["w"])


def test_kv_cache_in_parameter_dtype():
    config = tiny("qwen2_5_vl", **TINY_TOKEN_IDS)
    model = nnx.eval_shape(lambda: QwenVL(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    cache = jax.eval_shape(lambda: model.init_cache(2, 8))
    assert {leaf.dtype for leaf in jax.tree.leaves(cache)} == {jnp.dtype(jnp.bfloat16)}
