"""`perception_rl.plan`: a run's programs compiled ahead of time for a TPU slice on this CPU.

The TPU tests need libtpu (`pip install '.[tpu]'`); they are skipped without it.
"""

import hashlib
import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from perception_rl import plan
from perception_rl.data import sources
from perception_rl.models.qwen_vl import prompts as prompts_lib
from perception_rl.policy import load_policy
from perception_rl.rl import batch as batch_lib
from perception_rl.rl import loop, runtime, trainer
from perception_rl.rl.rollouts import RolloutCollector
from perception_rl.sampling import sampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu not installed ([tpu] extra)")


def smoke_config(**overrides):
    spec = importlib.util.spec_from_file_location("smoke", os.path.join(ROOT, "configs/smoke.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = plan.with_plan_defaults(module.get_config())
    for key, value in overrides.items():
        section, name = key.rsplit(".", 1) if "." in key else ("", key)
        target = config
        for part in filter(None, section.split(".")):
            target = target[part]
        target[name] = value
    return config


@needs_libtpu
def test_smoke_plan_fits_v5e_2x2():
    result = plan.make_plan(smoke_config(), "v5e:2x2")
    names = [p.name for p in result.programs]
    assert names == ["sampler prefill", "sampler decode", "reference log-probs", "grpo update"]
    assert result.chips == 4 and result.fits
    for program in result.programs:
        assert 0 < program.peak < result.chip.hbm and program.flops > 0
    # The update's buffers beside the frozen reference weights, which stay resident.
    update = result.programs[-1]
    assert update.resident == plan.per_chip_bytes(plan.setup(smoke_config(), "v5e:2x2").params)
    text = plan.report(result)
    assert "fits" in text and "grpo update" in text
    assert result.step_seconds() > 0


def run_cli(*args):
    env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    return subprocess.run(
        [sys.executable, "-m", "perception_rl.plan", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@needs_libtpu
def test_cli_exits_nonzero_with_one_line_when_it_does_not_fit():
    # 7B replicated on every v5e chip (pure data parallelism): one chip must hold it all.
    out = run_cli(
        "--config=configs/common.py",
        "--topology=v5e:2x2",
        "--mesh=4,1,1",
        "--config.model=qwen2_vl_7b",
        "--config.dtype=bfloat16",
    )
    assert out.returncode == 1, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("perception_rl.plan")]
    assert len(lines) == 1, out.stderr[-2000:]
    assert "does not fit: train state needs" in lines[0] and "TPU v5e has 15.75 GiB" in lines[0]


def fingerprint(lowered) -> str:
    return hashlib.sha256(lowered.as_text().encode()).hexdigest()


class Recorder:
    """Wraps a jitted function: records the fingerprint of each call's program, then runs it."""

    def __init__(self, name, fn, log):
        self.name, self.fn, self.log = name, fn, log

    def __call__(self, *args, **kwargs):
        self.log.append((self.name, fingerprint(self.fn.lower(*args, **kwargs))))
        return self.fn(*args, **kwargs)


def test_plan_programs_are_the_trainer_programs(monkeypatch):
    """One real GRPO step of the smoke run on 8 CPU devices (FSDP 4 x tensor 2): the HLO of
    every program it runs equals the plan's for the same shapes and mesh."""
    config = smoke_config(mesh_shape=(1, 4, 2))
    mesh = runtime.build_mesh(config)
    policy = load_policy(config, mesh)
    task = sources.task_from_config(config)
    step_fn = loop.make_train_step(
        config, policy, mesh, trainer.step_config(config), config.optim, config.train.num_steps
    )
    formatter = batch_lib.PromptFormatter(
        task, policy.processor, policy.model_config.family, policy.model_config.vision
    )
    records = runtime.prompt_batches(
        config, formatter, config.rl.prompts_per_step, runtime.training_source(config, task)
    )
    collector = RolloutCollector(policy, records, trainer.rollout_config(config, policy, task))
    log = []
    monkeypatch.setattr(sampler, "_prefill", Recorder("sampler prefill", sampler._prefill, log))
    monkeypatch.setattr(sampler, "_decode", Recorder("sampler decode", sampler._decode, log))
    step_fn.update = Recorder("grpo update", step_fn.update, log)
    step_fn.logprobs = Recorder("reference log-probs", step_fn.logprobs, log)
    state = step_fn.init_state(policy.params)
    seen = {}
    collect = collector.collect

    def spy(params, key, num_groups):  # the padded shapes the plan must assume
        rollouts = collect(params, key, num_groups)
        seen["batch"] = rollouts.batch
        return rollouts

    collector.collect = spy
    trainer.grpo_step(state, 1, jax.random.key(0), collector, step_fn, policy.params, config)
    monkeypatch.undo()  # the plan lowers the sampler's own jitted functions

    prompts = seen["batch"]["prompts"]
    grids = prompts["image_grid_thw"].reshape(-1, 3)
    shapes = plan.Shapes(
        prompts=config.rl.prompts_per_step,
        group=config.rl.num_generations,
        completion=config.rl.max_new_tokens,
        prompt_length=prompts["input_ids"].shape[1],
        patches=int(grids.prod(axis=-1).max()),
        padded_patches=prompts["pixel_values"].shape[1],
        sampler_chunk=config.rl.prompts_per_step,
    )
    assert (grids.prod(axis=-1) == shapes.patches).all()  # one image size: patches add up
    setup = plan.setup(config, "gpu:8")
    planned = [
        (name, fingerprint(lowered)) for name, lowered, *_ in plan.lowerings(config, setup, shapes)
    ]
    assert [name for name, _ in planned] == [name for name, _ in log]
    assert planned == log


def test_sampler_chunks_leave_greedy_rollouts_unchanged():
    """`rl.sampler_chunk` only splits the sampler's batch: greedy completions are equal."""
    config = smoke_config(**{"rl.temperature": 0.0})
    mesh = runtime.build_mesh(config)
    policy = load_policy(config, mesh)
    task = sources.task_from_config(config)
    formatter = batch_lib.PromptFormatter(
        task, policy.processor, policy.model_config.family, policy.model_config.vision
    )
    records = next(
        runtime.prompt_batches(
            config, formatter, config.rl.prompts_per_step, runtime.training_source(config, task)
        )
    )
    prompts = prompts_lib.pad_prompts([r["prompt"] for r in records], pad_id=policy.pad_id)
    key = jax.random.key(1)
    results = []
    for chunk in (None, 1):
        rollout = trainer.rollout_config(config, policy, task)
        rollout = type(rollout)(**{**rollout.__dict__, "sampler_chunk": chunk})
        results.append(
            RolloutCollector(policy, iter(()), rollout).sample(policy.params, prompts, key)
        )
    for other in results[1:]:
        np.testing.assert_array_equal(other.tokens, results[0].tokens)
        np.testing.assert_array_equal(other.lengths, results[0].lengths)
        np.testing.assert_array_equal(other.prompt_index, results[0].prompt_index)
        np.testing.assert_allclose(other.logprobs, results[0].logprobs, atol=1e-5)


def test_gpu_plan_is_an_estimate_from_cpu_devices():
    config = smoke_config(mesh_shape=(1, 4, 2))
    result = plan.make_plan(config, "h100:8", only="update")
    assert [p.name for p in result.programs] == ["grpo update"]
    assert not result.chip.tpu and result.fits and result.programs[0].peak > 0
    assert "an estimate" in plan.report(result)


@pytest.mark.slow
def test_depth_extrapolation_matches_a_real_compile():
    """`--extrapolate_depth`: the remat'ed update of the smoke run's Qwen2.5-VL compiled at
    three reduced depths (decoder layers / windowed + full-attention vision blocks 1/1+1,
    2/1+1, 1/2+1), every figure fitted linearly in the layer counts and evaluated at 6/4+2
    (the second full-attention block fitted as a windowed one), against the real compile of
    6/4+2 on 8 CPU devices. Measured: arguments, outputs, aliased bytes and FLOPs exact
    (< 0.01%), temporaries and peak -0.1% (README "Will it fit?")."""
    config = smoke_config(mesh_shape=(1, 4, 2), **{"train.remat": True})
    base = plan.setup(config, "gpu:8")
    shapes = plan.step_shapes(config, base.model_config, "train")
    depths = plan.fit_depths(plan.model_depth(base.model_config), low=1)
    assert [str(d) for d in depths] == ["1/1+1", "2/1+1", "1/2+1"]
    runs = [
        (d, plan.compile_programs(config, plan.setup(config, "gpu:8", depth=d), shapes, "update"))
        for d in depths
    ]
    target = plan.Depth(6, 4, 2)
    (fitted,) = plan.extrapolate_programs(runs, target)
    (real,) = plan.compile_programs(
        config, plan.setup(config, "gpu:8", depth=target), shapes, "update"
    )
    for field in ("arguments", "outputs", "aliased"):
        assert getattr(fitted, field) == pytest.approx(getattr(real, field), rel=1e-4), field
    assert fitted.flops == pytest.approx(real.flops, rel=0.01)
    # Linear up to XLA's buffer reuse: measured -0.1%; 3% leaves room for other XLA versions.
    assert fitted.temporaries == pytest.approx(real.temporaries, rel=0.03)
    assert fitted.peak == pytest.approx(real.peak, rel=0.03)
    assert fitted.temporaries_per_layer[1] > 0 and fitted.temporaries_per_layer[2] > 0
