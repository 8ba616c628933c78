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

import time
from typing import Any

import jax
import numpy as np

from perception_rl.data import sources
from perception_rl.errors import require_at_least
from perception_rl.parallel import hosts
from perception_rl.policy import Policy, load_policy
from perception_rl.rl import batch as batch_lib
from perception_rl.rl import runtime
from perception_rl.rl.loop import make_train_step, train_loop
from perception_rl.rl.metric_writer import PERF_PREFIX
from perception_rl.rl.rollouts import RolloutCollector, RolloutConfig
from perception_rl.rl.train_step import (
    StepConfig,
    TrainStep,
)
from perception_rl.tasks import reward_options

# Shown on the progress bar.
_POSTFIX = ("reward/total/mean", "kl", "loss")


def step_config(config) -> StepConfig:
    """The static update settings of a GRPO config."""
    rl, train = config.rl, config.train
    return StepConfig(
        loss="grpo",
        group_size=rl.num_generations,
        policy_loss=runtime.loss_settings(rl),
        num_micro_batches=train.num_micro_batches,
        logprob_chunk=train.logprob_chunk,
        temperature=rl.logprob_temperature,
        remat=train.get("remat_policy") or train.remat,
        attention_chunk=train.get("attention_chunk"),
    )


def rollout_config(config, policy: Policy, task: Any) -> RolloutConfig:
    """Sampling, reward and advantage settings; reward options: the task's, then the config's."""
    rl = config.rl
    options = reward_options(task, policy.model_config.family, config.reward.to_dict())
    return RolloutConfig(
        group_size=rl.num_generations,
        max_new_tokens=rl.max_new_tokens,
        temperature=rl.temperature,
        top_k=rl.top_k,
        top_p=rl.top_p,
        eos_ids=policy.stop_ids,  # the same end tokens as evaluation
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


def train(config, workdir: str, *, task: Any = None, source: Any = None) -> dict:
    """Runs (or resumes) GRPO training in `workdir`.

    Args:
        config: the ml_collections config (see configs/common.py).
        workdir: run directory: checkpoints/, metrics.jsonl, tensorboard/, policy/.
        task: the task object; default `perception_rl.tasks.get_task(config.task)`.
        source: random-access examples; default from `config.data`.

    Returns:
        {"step": last step run, "stopped": whether SIGTERM ended the run, "metrics": the last
        step's metrics, "policy": the exported policy directory or None}.
    """
    mesh = runtime.build_mesh(config)
    rl, train_cfg = config.rl, config.train
    runtime.check_rl(rl)
    require_at_least(
        config,
        1,
        "train.num_steps",
        "train.num_micro_batches",
        "train.keep_checkpoints",
        "train.logprob_chunk",
        "rl.prompts_per_step",
        "rl.max_new_tokens",
    )
    require_at_least(config, 0, "train.checkpoint_every", "train.stop_grace_s")
    runtime.check_batch(
        "rl.prompts_per_step",
        rl.prompts_per_step,
        rl.num_generations,
        train_cfg.num_micro_batches,
        mesh,
    )
    task = sources.task_from_config(config) if task is None else task
    source = runtime.training_source(config, task, source)  # checked before any compile
    policy = load_policy(config, mesh)
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
        source,
    )
    collector = RolloutCollector(policy, records, rollout_config(config, policy, task))
    return train_loop(
        config,
        workdir,
        policy=policy,
        step_fn=step_fn,
        records=records,
        num_steps=train_cfg.num_steps,
        checkpoint_every=train_cfg.checkpoint_every,
        description="grpo",
        postfix=_POSTFIX,
        make_one_step=lambda rng: (
            lambda state, step: grpo_step(state, step, rng, collector, step_fn, reference, config)
        ),
    )


def grpo_step(
    state, step: int, rng, collector: RolloutCollector, step_fn: TrainStep, reference, config
) -> tuple[Any, dict]:
    """One GRPO step; the only host sync is reading the metrics back at the end."""
    rl = config.rl
    start = time.perf_counter()
    rollouts = collector.collect(state.params, jax.random.fold_in(rng, step), rl.prompts_per_step)
    sampled = time.perf_counter()
    batch = hosts.global_arrays(rollouts.batch, step_fn.batch_sharding)
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
