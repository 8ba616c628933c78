"""Supervised fine-tuning: cross-entropy on the answer tokens only (the papers' SFT baseline and
the warm start of the tiny model before GRPO).

    from perception_rl.rl import sft
    summary = sft.train(config, workdir)      # resumes from workdir when it holds a run

Each example becomes the task's prompt followed by its ideal completion `task.answer(...)` and
the end-of-turn token; only those answer tokens carry loss (a token mean over the batch). The
data pipeline, sharding, micro-batching, checkpoints, resume, SIGTERM handling, metrics and the
final HF export are the GRPO trainer's: the update is `rl.train_step` with `loss="sft"` and
one "completion" (the answer) per prompt.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from perception_rl.data import sources
from perception_rl.errors import require_at_least
from perception_rl.models.qwen_vl import prompts as prompts_lib
from perception_rl.parallel import hosts
from perception_rl.policy import load_policy
from perception_rl.rl import batch as batch_lib
from perception_rl.rl import runtime
from perception_rl.rl.loop import make_train_step, train_loop
from perception_rl.rl.metric_writer import PERF_PREFIX
from perception_rl.rl.train_step import StepConfig


def sft_batch(records: list[dict], pad_id: int) -> dict:
    """The global SFT batch: padded prompts and answers, gathered from every host."""
    prompts = [record["prompt"] for record in records]
    answer_length = prompts_lib.bucket(
        max(len(r["answer_ids"]) for r in records), batch_lib.MIN_ANSWER_LENGTH
    )
    sizes = hosts.host_max(np.append(prompts_lib.prompt_sizes(prompts), answer_length))
    local = {
        "prompts": prompts_lib.pad_prompts(prompts, pad_id=pad_id, sizes=sizes[:3]),
        "completions": dict(zip(("tokens", "mask"), batch_lib.pad_answers(records, int(sizes[3])))),
    }
    return hosts.gather_hosts(local)


def step_config(config) -> StepConfig:
    """The static update settings of an SFT config."""
    return StepConfig(
        loss="sft",
        group_size=1,
        num_micro_batches=config.sft.num_micro_batches,
        logprob_chunk=config.train.logprob_chunk,
        remat=config.train.get("remat_policy") or config.train.remat,
        attention_chunk=config.train.get("attention_chunk"),
    )


def train(config, workdir: str, *, task: Any = None, source: Any = None) -> dict:
    """Runs (or resumes) SFT in `workdir` with the `sft` section of the config.

    Args:
        config: the ml_collections config (see configs/common.py; `sft` section).
        workdir: run directory: checkpoints/, metrics.jsonl, tensorboard/, policy/.
        task: the task object; default `perception_rl.tasks.get_task(config.task)`.
        source: random-access examples; default from `config.data`.

    Returns:
        {"step", "stopped", "metrics", "policy"} as `rl.trainer.train`.
    """
    mesh = runtime.build_mesh(config)
    cfg = config.sft
    require_at_least(
        config,
        1,
        "sft.num_steps",
        "sft.batch_size",
        "sft.num_micro_batches",
        "train.keep_checkpoints",
        "train.logprob_chunk",
    )
    require_at_least(config, 0, "sft.checkpoint_every", "train.stop_grace_s")
    runtime.check_batch("sft.batch_size", cfg.batch_size, 1, cfg.num_micro_batches, mesh)
    task = sources.task_from_config(config) if task is None else task
    source = runtime.training_source(config, task, source)  # checked before any compile
    policy = load_policy(config, mesh)
    settings = step_config(config)
    step_fn = make_train_step(config, policy, mesh, settings, cfg.optim, cfg.num_steps)
    formatter = batch_lib.PromptFormatter(
        task,
        policy.processor,
        policy.model_config.family,
        policy.model_config.vision,
        with_answer=True,
        eos_id=policy.eos_id,
    )
    records = runtime.prompt_batches(
        config, formatter, runtime.per_host(cfg.batch_size, "sft.batch_size"), source
    )

    def one_step(state, step):
        del step
        began = time.perf_counter()
        batch = sft_batch(next(records), policy.pad_id)
        state, metrics = step_fn.update(state, hosts.global_arrays(batch, step_fn.batch_sharding))
        metrics = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        elapsed = time.perf_counter() - began
        metrics[PERF_PREFIX + "step_time_s"] = elapsed
        metrics[PERF_PREFIX + "tokens_per_s"] = metrics["completion_tokens"] / elapsed
        return state, metrics

    return train_loop(
        config,
        workdir,
        policy=policy,
        step_fn=step_fn,
        records=records,
        num_steps=cfg.num_steps,
        checkpoint_every=cfg.checkpoint_every,
        description="sft",
        postfix=("loss",),
        make_one_step=lambda rng: one_step,  # SFT draws no randomness
    )
