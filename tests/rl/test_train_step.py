"""The sharded train step: mesh-invariance, micro-batch accumulation, non-finite skips, and the
log-probs and loss it optimises."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from perception_rl.data import synthetic
from perception_rl.models.qwen_vl import QwenVL, tiny
from perception_rl.models.qwen_vl import prompts as prompts_lib
from perception_rl.parallel import hosts, make_mesh
from perception_rl.processing import TINY_TOKEN_IDS, Processor, tiny_tokenizer_path
from perception_rl.rl import batch as batch_lib
from perception_rl.rl import grpo
from perception_rl.rl.train_step import (
    StepConfig,
    TrainStep,
    learning_rate_schedule,
    loss_terms,
    make_optimizer,
)
from perception_rl.sampling import generate
from perception_rl.tasks import get_task

PROMPTS, GROUP, LENGTH, EOS = 4, 2, 16, TINY_TOKEN_IDS["eos_token_id"]
# token_mean (DAPO): micro-batches hold different numbers of tokens, so averaging their losses
# instead of summing terms would be visibly biased.
LOSS = grpo.LossSettings(beta=0.04, epsilon_low=0.2, epsilon_high=0.28, loss_agg="token_mean")
GRPO = {"group_size": GROUP, "logprob_chunk": 8, "policy_loss": LOSS}


@pytest.fixture(scope="module")
def policy():
    config = tiny("qwen2_5_vl", **TINY_TOKEN_IDS)
    graphdef, params = nnx.split(QwenVL(config, rngs=nnx.Rngs(0)), nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


@pytest.fixture(scope="module")
def prompts(policy):
    graphdef, _ = policy
    processor = Processor.from_pretrained(tiny_tokenizer_path())
    vision = nnx.merge(graphdef, _abstract(policy)).config.vision
    formatter = batch_lib.PromptFormatter(get_task("ocr"), processor, "qwen2_5_vl", vision)
    records = [formatter(synthetic.generate_example("ocr", i)) for i in range(PROMPTS)]
    return prompts_lib.pad_prompts([r["prompt"] for r in records], pad_id=0)


def _abstract(policy):
    return jax.tree.map(jnp.asarray, policy[1])


_STEPS = {}


def make_step(policy, devices: int, micro_batches: int, remat: bool = False) -> TrainStep:
    """Train steps (SGD, lr 0.1) cached per setting, so tests share compilations."""
    key = (devices, micro_batches, remat)
    if key not in _STEPS:
        mesh = (
            make_mesh((1, 1, 1), devices=jax.devices()[:1])
            if devices == 1
            else make_mesh((2, 2, 2))
        )
        schedule = optax.constant_schedule(0.1)
        config = StepConfig(**GRPO, num_micro_batches=micro_batches, remat=remat)
        _STEPS[key] = TrainStep(policy[0], policy[1], config, optax.sgd(schedule), schedule, mesh)
    return _STEPS[key]


@pytest.fixture(scope="module")
def batch(policy, prompts):
    """Random completions with old and reference log-probs near the current policy's."""
    rng = np.random.default_rng(0)
    rows = PROMPTS * GROUP
    tokens = rng.integers(14, 1000, (rows, LENGTH)).astype(np.int32)
    lengths = rng.integers(1, LENGTH + 1, rows)
    tokens[np.arange(rows), lengths - 1] = EOS
    completions = {
        "tokens": tokens,
        "mask": batch_lib.length_mask(lengths, LENGTH),
        "advantages": rng.normal(size=rows).astype(np.float32),
    }
    out = {"prompts": prompts, "completions": completions}
    step = make_step(policy, 1, 1)
    logps = np.asarray(step.logprobs(policy[1], hosts.global_arrays(out, step.batch_sharding)))
    completions["old_logps"] = logps + rng.normal(scale=0.3, size=logps.shape).astype(np.float32)
    completions["ref_logps"] = logps + rng.normal(scale=0.1, size=logps.shape).astype(np.float32)
    return out


def run_updates(step: TrainStep, params, batch, n=2):
    state = step.init_state(params)
    placed = hosts.global_arrays(batch, step.batch_sharding)
    metrics = []
    for _ in range(n):
        state, m = step.update(state, placed)
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


@pytest.fixture(scope="module")
def reference_run(policy, batch):
    return run_updates(make_step(policy, 1, 1), policy[1], batch)


def assert_same_run(a, b, atol=1e-5):
    (state_a, metrics_a), (state_b, metrics_b) = a, b
    for ma, mb in zip(metrics_a, metrics_b):
        assert ma.keys() == mb.keys()
        for name in ma:
            np.testing.assert_allclose(mb[name], ma[name], rtol=1e-5, atol=1e-6, err_msg=name)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(y, x, atol=atol), state_a.params, state_b.params
    )


def test_eight_device_mesh_equals_one_device(policy, batch, reference_run):
    sharded = make_step(policy, 8, 1)
    kernel = sharded.param_shardings["model"]["layers"][0]["mlp"]["gate_proj"]["kernel"]
    assert tuple(kernel.spec) == ("fsdp", "tensor")  # really sharded, not replicated
    assert_same_run(reference_run, run_updates(sharded, policy[1], batch))


def test_micro_batches_accumulate_to_the_full_batch(policy, batch, reference_run):
    """Two micro-batches (with rematerialised layers) give the full batch's update."""
    # Uneven completion lengths make per-micro-batch means differ from the full-batch mean.
    step = make_step(policy, 1, 2, remat=True)
    placed = hosts.global_arrays(batch, step.batch_sharding)
    reference = make_step(policy, 1, 1)
    np.testing.assert_allclose(
        step.logprobs(policy[1], placed),
        reference.logprobs(policy[1], hosts.global_arrays(batch, reference.batch_sharding)),
        atol=1e-5,
    )
    assert_same_run(reference_run, run_updates(step, policy[1], batch))


def test_update_descends_the_grpo_loss_of_its_own_log_probs(policy, batch, reference_run):
    step = make_step(policy, 1, 1)
    placed = hosts.global_arrays(batch, step.batch_sharding)
    c = batch["completions"]

    def loss_fn(params):
        return grpo.policy_loss(
            step.logprobs(params, placed),
            c["old_logps"],
            c["ref_logps"],
            c["advantages"],
            c["mask"],
            LOSS,
        )

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(policy[1])
    first = reference_run[1][0]
    np.testing.assert_allclose(first["loss"], loss, rtol=1e-5)
    for name in ("kl", "clip_frac_low", "clip_frac_high", "ratio"):
        np.testing.assert_allclose(first[name], metrics[name], rtol=1e-5, err_msg=name)
    assert 0 < first["clip_frac"] < 1  # the clip is active on part of the tokens
    # SGD with lr 0.1: one update moves the parameters by exactly -0.1 * that gradient.
    after_one, _ = run_updates(step, policy[1], batch, n=1)
    jax.tree.map(
        lambda p0, p1, g: np.testing.assert_allclose(p1, p0 - 0.1 * g, atol=1e-6),
        policy[1],
        after_one.params,
        grad,
    )


def test_non_finite_loss_skips_the_update(policy, batch):
    step = make_step(policy, 1, 1)
    state = step.init_state(policy[1])
    before = jax.device_get(state)
    bad = {
        "prompts": batch["prompts"],
        "completions": {
            **batch["completions"],
            "advantages": np.full(PROMPTS * GROUP, np.nan, np.float32),
        },
    }
    state, metrics = step.update(state, hosts.global_arrays(bad, step.batch_sharding))
    after = jax.device_get(state)
    assert int(metrics["skipped"]) == 1 and not np.isfinite(metrics["loss"])
    jax.tree.map(np.testing.assert_array_equal, before.params, after.params)
    jax.tree.map(np.testing.assert_array_equal, before.opt_state, after.opt_state)
    state, metrics = step.update(state, hosts.global_arrays(batch, step.batch_sharding))
    assert int(metrics["skipped"]) == 1 and int(state.step) == 2 and np.isfinite(metrics["loss"])


def test_log_probs_equal_the_samplers(policy, prompts):
    """Same prefix, positions and image slots as the KV-cache decoder that drew the tokens."""
    graphdef, params = policy
    out = generate(
        nnx.merge(graphdef, params),
        prompts,
        max_new_tokens=LENGTH,
        key=jax.random.key(3),
        num_samples=GROUP,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        eos_ids=(EOS,),
        pad_id=0,
    )
    mask = batch_lib.length_mask(out.lengths, LENGTH)
    step = make_step(policy, 1, 1)
    completions = {
        "tokens": out.tokens,
        "mask": mask,
        "advantages": np.zeros(len(mask), np.float32),
    }
    batch = hosts.global_arrays(
        {"prompts": prompts, "completions": completions}, step.batch_sharding
    )
    ours = np.asarray(step.logprobs(params, batch))
    np.testing.assert_allclose(ours * mask, out.logprobs * mask, atol=1e-4)


def test_sft_loss_is_the_token_mean_cross_entropy():
    rng = np.random.default_rng(1)
    logps = jnp.asarray(-rng.exponential(size=(3, 5)), jnp.float32)
    mask = jnp.asarray([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], jnp.float32)
    terms = loss_terms(
        StepConfig(loss="sft", group_size=1), logps, jnp.zeros_like(logps), {"mask": mask}
    )
    np.testing.assert_allclose(terms.loss, -(logps * mask).sum() / 8, rtol=1e-6)
    halves = [
        loss_terms(StepConfig(loss="sft", group_size=1), logps[s], logps[s] * 0, {"mask": mask[s]})
        for s in (slice(0, 1), slice(1, 3))
    ]
    merged = jax.tree.map(jnp.add, *halves)
    np.testing.assert_allclose(merged.loss, terms.loss, rtol=1e-6)


def test_schedule_and_clipped_adamw():
    schedule = learning_rate_schedule(1e-3, 10, warmup_steps=2, end_learning_rate=1e-4)
    np.testing.assert_allclose(
        [schedule(i) for i in (0, 1, 2, 6, 10)], [0, 5e-4, 1e-3, 1e-3 - 0.5 * 9e-4, 1e-4], rtol=1e-6
    )
    optimizer = make_optimizer(optax.constant_schedule(0.1), grad_clip=1.0, weight_decay=0.0)
    params = {"w": jnp.ones(4)}
    grads = {"w": jnp.full(4, 10.0)}  # norm 20, clipped to 1: each entry 0.05
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    reference = optax.adamw(0.1, weight_decay=0.0)
    expected, _ = reference.update({"w": jnp.full(4, 0.05)}, reference.init(params), params)
    np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)
