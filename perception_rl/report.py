"""The main job's report: reward curves, galleries and the SFT-vs-GRPO table.

    report.write(workdir, summary, split)

writes under `<workdir>/report/`:

  reward_curves.png   GRPO's training reward per step, one panel per reward component
                      (`reward/<name>/mean` in grpo/metrics.jsonl) with a moving average, and
                      SFT's loss per step for context;
  gallery.png         the GRPO policy's eval gallery (ground truth green, predictions red);
  gallery_sft.png     the SFT policy's, for comparison;
  before_after.json   the summary (`recipe.before_after`);
  table.md            the task's headline metrics, SFT vs GRPO, as printed, with the paired
                      bootstrap interval of GRPO − SFT and the headroom table (pass@k).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from perception_rl.eval import runner
from perception_rl.rl.metric_writer import read_metrics
from perception_rl.tasks import get_task

_SMOOTH = 5  # steps in the moving average drawn over the noisy per-step reward


def reward_series(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{component: (steps, per-step mean)} of every `reward/<component>/mean` key."""
    names = sorted(
        {key for r in records for key in r if key.startswith("reward/") and key.endswith("/mean")}
    )
    series = {}
    for key in names:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        steps, values = (np.array(column, np.float64) for column in zip(*points))
        series[key[len("reward/") : -len("/mean")]] = (steps, values)
    return series


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to `window` values (shorter at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot_curves(path: str, grpo_records: list[dict], sft_records: list[dict]) -> str:
    """Writes reward_curves.png (see module docstring); returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = reward_series(grpo_records)
    panels = len(series) + 1
    figure = Figure(figsize=(4.0 * panels, 3.2))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    for ax, (name, (steps, values)) in zip(axes, series.items()):
        ax.plot(steps, values, ".", alpha=0.4, label="per step")
        ax.plot(steps, moving_average(values, _SMOOTH), "-", label=f"mean of {_SMOOTH}")
        ax.set_title(f"GRPO reward: {name}", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    losses = [(r["step"], r["loss"]) for r in sft_records if "loss" in r]
    if losses:
        axes[-1].plot(*zip(*losses), "-")
    axes[-1].set_title("SFT loss (warm start)", fontsize=9)
    axes[-1].set_xlabel("step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def format_table(summary: dict, split: str) -> str:
    """The eval runner's table (the task's headline columns, ×100) with SFT, GRPO and Δ."""
    task = get_task(summary["task"])
    rows = [
        ("SFT", split, summary["metrics"]["sft"]),
        ("GRPO", split, summary["metrics"]["grpo"]),
        ("Δ GRPO − SFT", split, summary["delta"]),
    ]
    return runner.format_table(task, rows)


def format_interval(summary: dict) -> str | None:
    """One line: the headline's GRPO − SFT with its paired bootstrap interval, in points."""
    interval = summary.get("interval")
    if not interval:
        return None
    task = get_task(summary["task"])
    header = task.table_columns[0][1]
    return (
        f"{header} GRPO − SFT: {100 * interval['delta']:+.1f} points, paired bootstrap "
        f"{100 * interval['confidence']:.0f}% interval [{100 * interval['low']:+.1f}, "
        f"{100 * interval['high']:+.1f}] over {interval['num_examples']} held-out examples "
        f"({interval['resamples']} resamples)"
    )


def format_headroom(summary: dict) -> str | None:
    """The pass@k table of both policies (×100), with its sampling settings."""
    headroom = summary.get("headroom")
    if not headroom:
        return None
    first = headroom["sft"]
    ks = list(first["pass@k"])
    title = (
        f"Headroom on the first {first['num_examples']} held-out examples, "
        f"{first['num_samples']} samples each at temperature {first['temperature']:g} "
        f"(top-k {first['top_k']}, top-p {first['top_p']:g}), {first['key']}:"
    )
    lines = [
        title,
        "",
        "| policy | greedy | " + " | ".join(f"pass@{k}" for k in ks) + " |",
        "|" + "---|" * (2 + len(ks)),
    ]
    for phase, label in (("sft", "SFT"), ("grpo", "GRPO")):
        row = headroom[phase]
        cells = [row.get("greedy"), *(row["pass@k"][k] for k in ks)]
        lines.append(f"| {label} | " + " | ".join(_points(v) for v in cells) + " |")
    return "\n".join(lines)


def _points(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _records(path: str) -> list[dict]:
    return read_metrics(path) if os.path.exists(path) else []


def write(workdir: str, summary: dict, split: str) -> str:
    """Writes the report (see module docstring), prints the table, returns the report dir."""
    out = os.path.join(workdir, "report")
    os.makedirs(out, exist_ok=True)
    plot_curves(
        os.path.join(out, "reward_curves.png"),
        _records(os.path.join(workdir, "grpo", "metrics.jsonl")),
        _records(os.path.join(workdir, "sft", "metrics.jsonl")),
    )
    for phase, name in (("grpo", "gallery.png"), ("sft", "gallery_sft.png")):
        source = os.path.join(workdir, "eval", phase, "gallery.png")
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(out, name))
    with open(os.path.join(out, "before_after.json"), "w") as f:
        json.dump(summary, f, indent=2)  # eval metrics arrive NaN-free (null) from JSON
        f.write("\n")
    table = format_table(summary, split)
    reward = summary.get("train_reward") or {}
    if reward.get("first") is not None:
        table += (
            f"\n\nGRPO training reward (mean of {reward['window']} steps): "
            f"first {reward['first']:.3f} → last {reward['last']:.3f} "
            f"over {reward['steps']} steps"
        )
    for extra in (format_interval(summary), format_headroom(summary)):
        if extra:
            table += "\n\n" + extra
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(f"\n{summary['task']}: SFT warm start vs GRPO on the held-out split\n{table}", flush=True)
    return out
