"""The main job's recipe: SFT warm start → eval → GRPO from the SFT policy → eval → report.

    from perception_rl import recipe
    summary = recipe.run(config, workdir)     # configs/synthetic.py; resumable

Layout of `workdir`:

  sft/                 SFT run (`rl.sft`): checkpoints/, metrics.jsonl, tensorboard/, policy/
  grpo/                GRPO run (`rl.trainer`) started from sft/policy, which is also the
                       frozen KL reference: checkpoints/, metrics.jsonl, tensorboard/, policy/
  eval/sft, eval/grpo  greedy evaluation of each policy on `config.eval.split` (held out from
                       training: a different split of the generator); see `eval.runner`;
                       headroom.json: pass@k at the training temperature on the split's first
                       `diagnostics.pass_k_examples` examples (`eval.headroom`)
  report/              reward_curves.png, gallery.png (GRPO) and gallery_sft.png (ground truth
                       green, predictions red), before_after.json, table.md

The summary also holds a paired bootstrap interval of the headline's GRPO − SFT difference over
the held-out examples (`eval.paired`), so the table says whether the gain is more than noise.

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
# `config.diagnostics` defaults: pass@k off unless the config asks (it costs sampled decoding).
_DIAGNOSTICS = {
    "pass_k": (1, 4, 8),
    "pass_k_examples": 0,
    "pass_k_prompts": 5,
    "bootstrap_resamples": 2000,
    "confidence": 0.95,
}


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
    for phase in PHASES:
        began = time.perf_counter()
        results[phase]["headroom"] = headroom_phase(config, workdir, phase)
        timings[f"{phase}_headroom_s"] = time.perf_counter() - began
    from perception_rl import report

    summary = before_after(config, workdir, results, timings)
    report.write(workdir, summary, config.eval.get("split") or "validation")
    return summary


def diagnostics(config) -> dict:
    """`config.diagnostics` over `_DIAGNOSTICS` (a config without the section gets those)."""
    section = config.get("diagnostics")
    return {**_DIAGNOSTICS, **(section.to_dict() if section is not None else {})}


def headroom_phase(config, workdir: str, phase: str) -> dict | None:
    """pass@k of `phase`'s policy (`eval.headroom`), computed once into eval/<phase>/; None
    when `diagnostics.pass_k_examples` is 0."""
    options = diagnostics(config)
    if not options["pass_k_examples"]:
        return None
    path = os.path.join(workdir, "eval", phase, "headroom.json")
    if not os.path.isfile(path):
        from perception_rl.eval import headroom

        result = headroom.evaluate(
            config,
            _policy_dir(workdir, phase),
            num_examples=int(options["pass_k_examples"]),
            ks=tuple(int(k) for k in options["pass_k"]),
            prompts=int(options["pass_k_prompts"]),
        )
        with open(path, "w") as f:
            json.dump(result, f)
    with open(path) as f:
        return json.load(f)


def _eval_scores(config, workdir: str, phase: str) -> tuple[list[int], dict | None]:
    """(image ids in split order, {image_id: headline score}) of a phase's greedy eval."""
    from perception_rl.data.sources import task_from_config
    from perception_rl.eval import paired
    from perception_rl.eval.predictions import read_predictions

    task = task_from_config(config)
    path = os.path.join(workdir, "eval", phase, "predictions.jsonl")
    records = read_predictions(path, task.prediction_keys)
    return [int(r["image_id"]) for r in records], paired.record_scores(
        task, records, paired.headline(task)
    )


def paired_interval(config, workdir: str) -> dict | None:
    """Bootstrap interval of the headline's GRPO − SFT over the held-out examples both policies
    were evaluated on (`eval.paired`); None when the headline is not a mean over examples."""
    from perception_rl.eval import paired

    _, before = _eval_scores(config, workdir, "sft")
    ids, after = _eval_scores(config, workdir, "grpo")
    if before is None or after is None or set(before) != set(after):
        return None
    options = diagnostics(config)
    return paired.paired_bootstrap(
        [before[i] for i in ids],
        [after[i] for i in ids],
        resamples=int(options["bootstrap_resamples"]),
        confidence=float(options["confidence"]),
        seed=int(config.seed),
    )


def greedy_on_subset(config, workdir: str, phase: str, num_examples: int) -> float | None:
    """The greedy headline on the first `num_examples` held-out examples (pass@k's subset)."""
    ids, scores = _eval_scores(config, workdir, phase)
    if scores is None:
        return None
    return float(np.mean([scores[i] for i in ids[:num_examples]]))


def headroom_summary(config, workdir: str, results: dict) -> dict | None:
    """{phase: {"greedy", "pass@k", ...}} of the headroom results, None when there are none."""
    summary = {}
    for phase in PHASES:
        found = results[phase].get("headroom")
        if found is None:
            return None
        summary[phase] = {
            **{k: v for k, v in found.items() if k != "scores"},
            "greedy": greedy_on_subset(config, workdir, phase, found["num_examples"]),
        }
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
        "interval": paired_interval(config, workdir),
        "headroom": headroom_summary(config, workdir, results),
        "train_reward": reward_window(read_metrics(grpo_log)) if os.path.exists(grpo_log) else None,
        "timings_s": timings,  # this invocation's phases; a skipped phase takes ~0 s
    }
