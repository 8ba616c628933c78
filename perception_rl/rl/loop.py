"""The loop GRPO (`rl.trainer`) and SFT (`rl.sft`) share: the sharded update built from a config,
resume from the newest readable checkpoint, and the step loop with metrics, checkpoints,
SIGTERM and the final HF export (`train_loop`). Each trainer supplies only its `one_step`.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from perception_rl.policy import Policy, export_policy, partition_rules
from perception_rl.rl import runtime
from perception_rl.rl.checkpoint import Checkpointer
from perception_rl.rl.metric_writer import MetricWriter
from perception_rl.rl.train_step import (
    StepConfig,
    TrainStep,
    learning_rate_schedule,
    make_optimizer,
)


def make_train_step(
    config, policy: Policy, mesh, step_settings: StepConfig, optim, num_updates: int
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
        partition_rules(config),
    )


def train_loop(
    config,
    workdir: str,
    *,
    policy: Policy,
    step_fn: TrainStep,
    records: Any,
    num_steps: int,
    checkpoint_every: int,
    description: str,
    postfix: tuple[str, ...],
    make_one_step,
) -> dict:
    """Resumes or starts a run in `workdir` and steps it to `num_steps` (`run_loop`).

    Args:
        config: the run's config (`seed`, `train.keep_checkpoints`, `train.stop_grace_s`).
        workdir: run directory: checkpoints/, metrics.jsonl, tensorboard/, policy/.
        policy: the loaded policy (its parameters start a fresh run).
        step_fn: the sharded update.
        records: the data iterator (its state is checkpointed).
        num_steps: the last step.
        checkpoint_every: steps between checkpoints.
        description, postfix: the progress bar's label and the metrics it shows.
        make_one_step: rng -> one_step(state, step) -> (state, metrics), given the run's key.
    """
    checkpoints = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        every=checkpoint_every,
        keep=config.train.keep_checkpoints,
    )
    state, rng, start = resume_or_init(checkpoints, step_fn, policy, records, config.seed)
    writer = MetricWriter(
        workdir,
        total_steps=num_steps,
        start_step=start,
        description=description,
        postfix=postfix,
    )
    return run_loop(
        make_one_step(rng),
        state,
        rng,
        start=start,
        num_steps=num_steps,
        checkpoints=checkpoints,
        writer=writer,
        records=records,
        policy=policy,
        workdir=workdir,
        grace_s=config.train.get("stop_grace_s", 120.0),
    )


def resume_or_init(
    checkpoints: Checkpointer, step_fn: TrainStep, policy: Policy, records: Any, seed: int
) -> tuple[Any, jax.Array, int]:
    """(state, RNG key, step) of the latest checkpoint (setting the data iterator's state), or
    a fresh state at step 0."""
    restored = checkpoints.restore_latest(step_fn.abstract_state(policy.params), records)
    if restored is None:
        return step_fn.init_state(policy.params), jax.random.key(seed), 0
    return restored


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
    policy: Policy,
    workdir: str,
    grace_s: float = 120.0,
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
        grace_s: seconds after SIGTERM before the process exits without a step boundary.

    Returns:
        {"step", "stopped", "metrics", "policy"} (see `train`).
    """
    stop = runtime.StopSignal(grace_s)
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
        checkpoints.wait()  # a failed save stops the run here, before the export
        if not stopped and step == num_steps:
            exported = os.path.join(workdir, "policy")
            export_policy(policy, state.params, exported)
    finally:
        stop.restore()
        checkpoints.close()
        writer.close()
    return {"step": step, "stopped": stopped, "metrics": metrics, "policy": exported}
