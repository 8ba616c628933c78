"""A paper's evaluation protocol: one checkpoint on every split of a task, one table.

    python -m perception_rl.eval.protocol --config=configs/pr1/grounding.py:$BASE \\
        --checkpoint=/runs/ground/checkpoints --workdir=/runs/ground [--config.key=value ...]

Reads the paper config's `protocol` section (configs/paper.py): for each `(label, tfds_config,
split)` of `protocol.splits` it decodes the split with the config's eval settings (greedy,
`eval.max_new_tokens`, `eval.repetition_penalty`), scores it with the task's metrics and writes
`<workdir>/protocol/<label>/predictions.jsonl`; then `<workdir>/protocol/`

  table.md       the paper's layout: one row for this checkpoint and one per `protocol.paper`
                 row, one column per `protocol.columns` entry (values ×100), then every metric
                 of every split (the task's table columns);
  metrics.json   {label: metrics} and the checkpoint evaluated.

The policy is loaded once (`runner.load_checkpoint`, or the caller's `load_policy`); decoding
and scoring are the eval runner's (`runner.make_source`, `runner.predict`,
`runner.score_predictions`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from perception_rl.data.sources import task_from_config
from perception_rl.errors import ConfigError, config_value
from perception_rl.eval import runner
from perception_rl.tasks import Task


@dataclasses.dataclass(frozen=True)
class ProtocolResult:
    """Per-split metrics and the table `run` wrote."""

    metrics: dict[str, dict[str, float]]
    table: str
    output_dir: pathlib.Path


def run(
    config,
    workdir: str | os.PathLike,
    *,
    load_policy: Callable[[Any], tuple[Any, Any]] | None = None,
) -> ProtocolResult:
    """Evaluates `config.checkpoint` on every split of `config.protocol.splits`."""
    splits = tuple(config_value(config, "protocol.splits") or ())
    if not splits:
        raise ConfigError("protocol.splits is empty: use a paper config (configs/pr1/...).")
    slugs = [_slug(label) for label, _, _ in splits]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"protocol.splits labels must give distinct directories, got {slugs}.")
    task = protocol_task(config)
    out = pathlib.Path(workdir) / "protocol"
    out.mkdir(parents=True, exist_ok=True)
    model, processor = (load_policy or runner.load_checkpoint)(config)
    metrics = {}
    for label, tfds_config, split in splits:
        metrics[label] = _evaluate_split(
            _split_config(config, tfds_config, split), task, model, processor, out / _slug(label)
        )
    name = runner.checkpoint_name(config)
    table = "\n\n".join(
        [
            paper_table(config.protocol, name, metrics),
            runner.format_table(task, [(name, label, m) for label, m in metrics.items()]),
        ]
    )
    (out / "table.md").write_text(table + "\n")
    summary = {
        "checkpoint": config_value(config, "checkpoint"),
        "metrics": {
            label: {k: _finite_or_none(v) for k, v in values.items()}
            for label, values in metrics.items()
        },
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table, flush=True)
    return ProtocolResult(metrics, table, out)


def protocol_task(config) -> Task:
    """The config's task as training builds it (`task_options`, dataset label names)."""
    return task_from_config(config)


def _split_config(config, tfds_config: str, split: str):
    """A copy of `config` reading `tfds_config`'s `split` (both keys exist in every config)."""
    split_config = copy.deepcopy(config)
    split_config.data.tfds_config = tfds_config
    split_config.eval.split = split
    return split_config


def _evaluate_split(config, task: Task, model, processor, out: pathlib.Path) -> dict[str, float]:
    source = runner.make_source(config, task, config.eval.split)
    records, examples = runner.predict(
        task,
        model,
        processor,
        source,
        model.config.family,
        batch_size=config_value(config, "eval.batch_size"),
        max_new_tokens=config_value(config, "eval.max_new_tokens"),
        repetition_penalty=config_value(config, "eval.repetition_penalty"),
    )
    out.mkdir(parents=True, exist_ok=True)
    runner.write_jsonl(out / "predictions.jsonl", records)
    return runner.score_predictions(task, records, examples)


def paper_table(protocol, name: str, metrics: Mapping[str, Mapping[str, float]]) -> str:
    """The paper's layout: a row for `name` (measured, ×100) and one per paper row.

    Args:
      protocol: the config's `protocol` section (`columns`, `paper`, `lower_is_better`).
      name: the evaluated checkpoint's row label.
      metrics: {split label: {metric key: fraction}}.
    """
    columns: Sequence = tuple(protocol.columns)
    lower = set(getattr(protocol, "lower_is_better", ()) or ())
    headers = [h + ("↓" if key in lower and not h.endswith("↓") else "") for _, key, h in columns]
    lines = ["| model | " + " | ".join(headers) + " |", "|---|" + "---|" * len(columns)]
    measured = [metrics.get(label, {}).get(key) for label, key, _ in columns]
    lines.append(_row(f"{name} (measured)", [_scaled(v) for v in measured]))
    for row_name, values in tuple(protocol.paper):
        lines.append(_row(str(row_name), list(values)))
    return "\n".join(lines)


def _row(name: str, values: Sequence) -> str:
    cells = ["–" if v is None or not math.isfinite(v) else f"{v:.1f}" for v in values]
    return "| " + " | ".join([name, *cells]) + " |"


def _scaled(value) -> float | None:
    return None if value is None else 100.0 * float(value)


def _finite_or_none(value) -> float | None:
    """Strict JSON: NaN (an undefined metric) becomes null."""
    value = float(value)
    return value if math.isfinite(value) else None


def _slug(label: str) -> str:
    """A directory name for a split label ("RefCOCO+ val" -> "refcocoplus_val")."""
    return re.sub(r"[^A-Za-z0-9]+", "_", label.replace("+", "plus")).strip("_").lower()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"perception_rl.eval.protocol: unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    if _CHECKPOINT.value:
        config.checkpoint = _CHECKPOINT.value
    run(config, _WORKDIR.value)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "A paper config (configs/pr1/...).")
    _CHECKPOINT = flags.DEFINE_string("checkpoint", None, "HF directory or orbax checkpoints.")
    _WORKDIR = flags.DEFINE_string("workdir", None, "Where protocol/ is written.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
