"""The main job's recipe: SFT warm start → eval → GRPO from the SFT policy → eval → report.

    from perception_rl.rl import recipe
    summary = recipe.run(config, workdir)     # configs/synthetic.py; resumable

Layout of `workdir`:

  sft/                 SFT run (`rl.sft`): checkpoints/, metrics.jsonl, tensorboard/, policy/
  grpo/                GRPO run (`rl.trainer`) started from sft/policy, which is also the
                       frozen KL reference: checkpoints/, metrics.jsonl, tensorboard/, policy/
  eval/sft, eval/grpo  greedy evaluation of each policy on `config.eval.split` (held out from
                       training: a different split of the generator); see `eval.runner`
  report/              reward_curves.png, gallery.png (GRPO) and gallery_sft.png (ground truth
                       green, predictions red), before_after.json, table.md

Every phase is skipped when its output exists (a policy export, a metrics.json), and the
training phases resume from their checkpoints, so re-running with the same workdir finishes
an interrupted job without redoing work.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from perception_rl.rl.metric_writer import read_metrics

PHASES = ("sft", "grpo")
_LABELS = {"sft": "SFT", "grpo": "GRPO"}
# Steps averaged for the "first" and "last" training reward in the summary.
_REWARD_WINDOW = 5


def phase_config(config, **overrides):
    """An unlocked copy of `config` with dotted-key overrides ("eval.name": ...)."""
    config = config.copy_and_resolve_references()
    config.unlock()
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        section = config
        for name in parents:
            section = section[name]
        section[key] = value
    return config


def _policy_dir(workdir: str, phase: str) -> str:
    return os.path.join(workdir, phase, "policy")


def _exported(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def train_phase(config, workdir: str, phase: str) -> dict | None:
    """Trains `phase` ("sft" from `config.model`, "grpo" from the SFT export) unless its
    policy is already exported; returns the trainer's summary (None when skipped)."""
    out = _policy_dir(workdir, phase)
    if _exported(out):
        return None
    if phase == "sft":
        from perception_rl.rl import sft

        summary = sft.train(config, os.path.join(workdir, phase))
    else:
        from perception_rl.rl import trainer

        # The SFT export carries weights, architecture and tokenizer; the trainer freezes the
        # policy it loads as the KL reference, so the reference is the SFT policy.
        start = phase_config(config, model=_policy_dir(workdir, "sft"), tokenizer=None)
        summary = trainer.train(start, os.path.join(workdir, phase))
    if not summary.get("stopped") and not _exported(out):
        raise RuntimeError(
            f"{phase} finished at step {summary.get('step')} without exporting {out}."
        )
    return summary


def eval_phase(config, workdir: str, phase: str) -> dict:
    """The metrics.json summary of `phase`'s policy on the held-out split (evaluated once)."""
    path = os.path.join(workdir, "eval", phase, "metrics.json")
    if not os.path.isfile(path):
        from perception_rl.eval import runner

        policy = _policy_dir(workdir, phase)
        runner.evaluate(
            phase_config(
                config, model=policy, checkpoint=policy, tokenizer=None, **{"eval.name": phase}
            ),
            workdir,
        )
    with open(path) as f:
        return json.load(f)


def run(config, workdir: str) -> dict:
    """Runs (or finishes) the whole recipe in `workdir`; prints and returns the before/after
    summary (see `before_after`).

    SIGTERM during training checkpoints the phase and returns its {"stopped": True, "step", ...}
    summary (what `perception_rl.main` reports); a rerun resumes it.
    """
    timings = {}
    results = {}
    for phase in PHASES:
        began = time.perf_counter()
        summary = train_phase(config, workdir, phase)
        if summary is not None and summary.get("stopped"):
            return {**summary, "phase": phase}
        timings[f"{phase}_train_s"] = time.perf_counter() - began
        began = time.perf_counter()
        results[phase] = eval_phase(config, workdir, phase)
        timings[f"{phase}_eval_s"] = time.perf_counter() - began
    from perception_rl.rl import report

    summary = before_after(config, workdir, results, timings)
    report.write(workdir, summary, config.eval.get("split") or "validation")
    return summary


def reward_window(records: list[dict], key: str = "reward/total/mean") -> dict:
    """Mean of `key` over the first and the last `_REWARD_WINDOW` steps of a metrics file."""
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    if not values:
        return {"first": None, "last": None, "steps": 0}
    n = min(_REWARD_WINDOW, len(values))
    return {
        "first": float(np.mean(values[:n])),
        "last": float(np.mean(values[-n:])),
        "steps": len(values),
        "window": n,
    }


def before_after(config, workdir: str, results: dict, timings: dict) -> dict[str, Any]:
    """The job's summary: per-phase eval metrics, GRPO - SFT deltas, training reward."""
    metrics = {phase: results[phase]["metrics"] for phase in PHASES}
    delta = {}
    for key, value in metrics["grpo"].items():
        before = metrics["sft"].get(key)
        if isinstance(value, (int, float)) and isinstance(before, (int, float)):
            delta[key] = value - before
    grpo_log = os.path.join(workdir, "grpo", "metrics.jsonl")
    return {
        "task": config.task,
        "seed": int(config.seed),
        "split": results["grpo"].get("split"),
        "num_examples": results["grpo"].get("num_examples"),
        "metrics": metrics,
        "delta": delta,
        "eval_mean_reward": {p: results[p].get("mean_reward") for p in PHASES},
        "train_reward": reward_window(read_metrics(grpo_log)) if os.path.exists(grpo_log) else None,
        "timings_s": timings,  # this invocation's phases; a skipped phase takes ~0 s
    }
