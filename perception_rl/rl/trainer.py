"""The GRPO training loop: prompts → rollouts → rewards → advantages → updates.

    from perception_rl.rl import trainer
    summary = trainer.train(config, workdir)      # resumes from workdir when it holds a run

Per step: collect a rollout batch with the current policy (`rl.rollouts`, dynamic sampling
optional), place it on the mesh, compute the frozen reference policy's log-probs (β > 0) and,
for μ > 1 updates per batch, the rollout policy's (old) log-probs, then run μ optimiser updates
(`rl.train_step`). Metrics go to `metrics.jsonl`, TensorBoard and a progress bar
(`rl.metric_writer`); orbax checkpoints (`rl.checkpoint`) hold the train state, the RNG key and
every host's data-iterator state, every `train.checkpoint_every` steps and at the end. A run
restarted with the same workdir resumes from its latest checkpoint and reproduces the same
steps. SIGTERM finishes the current step, checkpoints it and returns. The final policy is
exported as an HF directory, `<workdir>/policy`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np

from perception_rl.rl import batch as batch_lib
from perception_rl.rl import runtime
from perception_rl.rl.checkpoint import Checkpointer
from perception_rl.rl.metric_writer import PERF_PREFIX, MetricWriter
from perception_rl.rl.rollouts import RolloutCollector, RolloutConfig
from perception_rl.rl.train_step import (
    StepConfig,
    TrainStep,
    learning_rate_schedule,
    make_optimizer,
)

# Shown on the progress bar.
_POSTFIX = ("reward/total/mean", "kl", "loss")


def step_config(config) -> StepConfig:
    """The static update settings of a GRPO config."""
    rl, train = config.rl, config.train
    return StepConfig(
        loss="grpo",
        group_size=rl.num_generations,
        beta=rl.beta,
        epsilon_low=rl.epsilon_low,
        epsilon_high=rl.epsilon_high,
        kl_estimator=rl.kl_estimator,
        loss_agg=rl.loss_agg,
        max_tokens_norm=rl.max_tokens_norm,
        num_micro_batches=train.num_micro_batches,
        logprob_chunk=train.logprob_chunk,
        temperature=rl.logprob_temperature,
        remat=train.get("remat_policy") or train.remat,
        attention_chunk=train.get("attention_chunk"),
    )


def rollout_config(config, policy: runtime.Policy, task: Any) -> RolloutConfig:
    """Sampling, reward and advantage settings; reward options: the task's, then the config's."""
    rl = config.rl
    options = dict(getattr(task, "reward_options", lambda family: {})(policy.model_config.family))
    options.update(config.reward.to_dict())
    return RolloutConfig(
        group_size=rl.num_generations,
        max_new_tokens=rl.max_new_tokens,
        temperature=rl.temperature,
        top_k=rl.top_k,
        top_p=rl.top_p,
        eos_ids=(policy.eos_id,),
        pad_id=policy.pad_id,
        reward=task.reward,
        reward_options=options,
        skip_special_tokens=bool(getattr(task, "skip_special_tokens", False)),
        advantage_estimator=rl.advantage_estimator,
        advantage_eps=rl.advantage_eps,
        advantage_components=tuple(rl.advantage_components),
        dynamic_sampling=rl.dynamic_sampling,
        max_resample=rl.max_resample,
        sampler_chunk=rl.get("sampler_chunk"),
    )


def make_train_step(
    config, policy: runtime.Policy, mesh, step_settings: StepConfig, optim, num_updates: int
) -> TrainStep:
    """The sharded update for `policy` with the AdamW schedule of an `optim` config section."""
    schedule = learning_rate_schedule(
        optim.learning_rate,
        num_updates,
        warmup_steps=optim.warmup_steps,
        end_learning_rate=optim.end_learning_rate,
    )
    optimizer = make_optimizer(
        schedule,
        b1=optim.b1,
        b2=optim.b2,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        grad_clip=optim.grad_clip,
        moment_dtype=optim.get("moment_dtype"),
    )
    return TrainStep(
        policy.graphdef,
        policy.params,
        step_settings,
        optimizer,
        schedule,
        mesh,
        runtime.partition_rules(config),
    )


def resume_or_init(
    checkpoints: Checkpointer, step_fn: TrainStep, policy: runtime.Policy, records: Any, seed: int
) -> tuple[Any, jax.Array, int]:
    """(state, RNG key, step) of the latest checkpoint (setting the data iterator's state), or
    a fresh state at step 0."""
    latest = checkpoints.latest_step()
    if latest is None:
        return step_fn.init_state(policy.params), jax.random.key(seed), 0
    state, rng, _ = checkpoints.restore(latest, step_fn.abstract_state(policy.params), records)
    return state, rng, latest


def train(config, workdir: str, *, task: Any = None, source: Any = None) -> dict:
    """Runs (or resumes) GRPO training in `workdir`.

    Args:
        config: the ml_collections config (see configs/common.py).
        workdir: run directory: checkpoints/, metrics.jsonl, tensorboard/, policy/.
        task: the task object; default `perception_rl.data.tasks.get_task(config.task)`.
        source: random-access examples; default from `config.data`.

    Returns:
        {"step": last step run, "stopped": whether SIGTERM ended the run, "metrics": the last
        step's metrics, "policy": the exported policy directory or None}.
    """
    mesh = runtime.build_mesh(config)
    rl, train_cfg = config.rl, config.train
    runtime.check_rl(rl)
    runtime.check_batch(
        "rl.prompts_per_step",
        rl.prompts_per_step,
        rl.num_generations,
        train_cfg.num_micro_batches,
        mesh,
    )
    task = runtime.get_task(config) if task is None else task
    policy = runtime.load_policy(config, mesh)
    settings = step_config(config)
    step_fn = make_train_step(
        config, policy, mesh, settings, config.optim, train_cfg.num_steps * rl.num_iterations
    )
    reference = policy.params if rl.beta else None  # frozen initial policy, never updated
    formatter = batch_lib.PromptFormatter(
        task, policy.processor, policy.model_config.family, policy.model_config.vision
    )
    records = runtime.prompt_batches(
        config,
        formatter,
        runtime.per_host(rl.prompts_per_step, "rl.prompts_per_step"),
        source=source,
    )
    collector = RolloutCollector(policy, records, rollout_config(config, policy, task))
    checkpoints = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        every=train_cfg.checkpoint_every,
        keep=train_cfg.keep_checkpoints,
    )
    state, rng, start = resume_or_init(checkpoints, step_fn, policy, records, config.seed)
    writer = MetricWriter(
        workdir,
        total_steps=train_cfg.num_steps,
        start_step=start,
        description="grpo",
        postfix=_POSTFIX,
    )
    one_step = lambda state, step: grpo_step(
        state, step, rng, collector, step_fn, reference, config
    )
    return run_loop(
        one_step,
        state,
        rng,
        start=start,
        num_steps=train_cfg.num_steps,
        checkpoints=checkpoints,
        writer=writer,
        records=records,
        policy=policy,
        workdir=workdir,
    )


def run_loop(
    one_step,
    state: Any,
    rng: jax.Array,
    *,
    start: int,
    num_steps: int,
    checkpoints: Checkpointer,
    writer: MetricWriter,
    records: Any,
    policy: runtime.Policy,
    workdir: str,
) -> dict:
    """Steps `start + 1 .. num_steps` with metrics, checkpoints, SIGTERM and the final export.

    Args:
        one_step: (state, step) -> (state, metrics dict of floats).
        state: the train state after `start` steps.
        rng: the run's key (checkpointed with the state).
        start: steps already done.
        num_steps: the last step.
        checkpoints: saves every `every` steps, at the end and on SIGTERM.
        writer: metric sink.
        records: the data iterator (its state is checkpointed).
        policy: exports the final parameters to `<workdir>/policy`.
        workdir: run directory.

    Returns:
        {"step", "stopped", "metrics", "policy"} (see `train`).
    """
    stop = runtime.StopSignal()
    step, metrics, stopped, exported = start, {}, False, None
    try:
        for step in range(start + 1, num_steps + 1):
            state, metrics = one_step(state, step)
            writer.write(step, metrics)
            stopped = stop.requested()
            if stopped or checkpoints.due(step) or step == num_steps:
                checkpoints.save(step, state, rng, records)
            if stopped:
                break
        if not stopped and step == num_steps:
            exported = os.path.join(workdir, "policy")
            runtime.export_policy(policy, state.params, exported)
    finally:
        stop.restore()
        checkpoints.close()
        writer.close()
    return {"step": step, "stopped": stopped, "metrics": metrics, "policy": exported}


def grpo_step(
    state, step: int, rng, collector: RolloutCollector, step_fn: TrainStep, reference, config
) -> tuple[Any, dict]:
    """One GRPO step; the only host sync is reading the metrics back at the end."""
    rl = config.rl
    start = time.perf_counter()
    rollouts = collector.collect(state.params, jax.random.fold_in(rng, step), rl.prompts_per_step)
    sampled = time.perf_counter()
    batch = batch_lib.global_arrays(rollouts.batch, step_fn.batch_sharding)
    completions = batch["completions"]
    if reference is not None:
        completions["ref_logps"] = step_fn.logprobs(reference, batch)
    if rl.num_iterations > 1:
        completions["old_logps"] = step_fn.logprobs(state.params, batch)
    updates = []
    for _ in range(rl.num_iterations):
        state, update_metrics = step_fn.update(state, batch)
        updates.append(update_metrics)
    updates = jax.device_get(updates)
    done = time.perf_counter()
    metrics = {**rollouts.metrics, **updates[0]}
    if len(updates) > 1:  # the last of the mu updates shows how far the ratio moved
        metrics.update({f"last_update/{k}": v for k, v in updates[-1].items()})
    metrics = {k: float(np.asarray(v)) for k, v in metrics.items()}
    metrics.update(
        {
            PERF_PREFIX + "step_time_s": done - start,
            PERF_PREFIX + "rollout_time_s": sampled - start,
            PERF_PREFIX + "update_time_s": done - sampled,
            PERF_PREFIX + "tokens_per_s": rollouts.tokens_sampled / (done - start),
            PERF_PREFIX + "completions_per_s": rollouts.completions_sampled / (done - start),
        }
    )
    return state, metrics
