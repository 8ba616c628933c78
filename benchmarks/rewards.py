"""Detection reward: batched library path vs a per-completion plain-Python implementation.

    python benchmarks/rewards.py [--completions 1024] [--group-size 8] [--boxes 20]
                                 [--repeats 5] [--rounds 3] [--threads N] [--strict]

Both paths score the same generated completions (~20 predicted boxes each, against ~20
ground-truth boxes per prompt). The baseline is the tests' reference reward
(`perception_rl.testing.reference_rewards.detection_reward`), written the way Perception-R1 scores
detection, one completion at a time: parse the JSON, build the DETR cost matrix, Hungarian-match with
scipy, filter at IoU > 0.5 and add up the terms (in plain Python floats instead of PR1's small
torch tensors). A per-completion numpy variant is timed too, for context. Each path runs in its
own worker process (`benchmarks/harness.py`), alternately for `--rounds` rounds on the same CPUs,
each timing `--repeats` calls after one warm-up call (which compiles the jitted code). Prints
min / median / max completions/s per path, the ratios of medians, whether other work shared the
machine, and the largest absolute difference between the paths' rewards. No roofline: the time
goes to host-side JSON parsing and Hungarian matching; the jitted part's FLOPs are negligible.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
from scipy.optimize import linear_sum_assignment

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)  # harness, however this file is loaded
sys.path.append(os.path.dirname(_HERE))  # this tree's perception_rl over an editable install

import harness

from perception_rl import rewards
from perception_rl.rewards.detection import COCO_CLASSES
from perception_rl.testing.reference_rewards import detection_reward


def make_batch(num_prompts: int, group_size: int, boxes: int, seed: int = 0):
    """Completions that jitter, drop, add and relabel ground-truth boxes, plus a few
    malformed elements (an unknown label, a 3-number box) and truncated completions."""
    rng = np.random.default_rng(seed)
    targets, completions = [], []
    for _ in range(num_prompts):
        n = int(rng.integers(boxes - 2, boxes + 3))
        xy = rng.uniform(0, 560, (n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(20, 120, (n, 2))], 1).round(1)
        labels = [COCO_CLASSES[i] for i in rng.integers(0, 80, n)]
        targets.append({"boxes": gt.tolist(), "labels": labels})
        for _ in range(group_size):
            keep = rng.random(n) > 0.15
            pred = gt[keep] + rng.normal(0, 6, (keep.sum(), 4))
            extra = rng.uniform(0, 600, (int(rng.integers(0, 4)), 2))
            # Qwen2.5-VL writes integer pixel coordinates; COCO ground truth has decimals.
            pred = np.concatenate([pred, np.concatenate([extra, extra + 50], 1)])
            pred = pred.round().astype(int)
            names = [labels[i] for i in np.flatnonzero(keep)] + ["person"] * len(extra)
            names = [COCO_CLASSES[rng.integers(80)] if rng.random() < 0.1 else s for s in names]
            items = [{"bbox_2d": b.tolist(), "label": s} for b, s in zip(pred, names)]
            if rng.random() < 0.1:
                items.append({"bbox_2d": [1, 2, 3], "label": "unicorn"})
            text = "```json\n" + json.dumps(items) + "\n```"
            completions.append(text[: len(text) // 2] if rng.random() < 0.03 else text)
    return completions, targets


def numpy_detection_reward(text: str, target: dict) -> float:
    """One completion with numpy arrays per completion (the same maths)."""
    try:
        items = json.loads(text.replace("```json", "").replace("```", ""))
    except ValueError:
        return 0.0
    if not isinstance(items, list):
        return 0.0
    index = {name: i for i, name in enumerate(COCO_CLASSES)}
    good = [
        it
        for it in items
        if isinstance(it, dict)
        and isinstance(it.get("bbox_2d"), list)
        and len(it["bbox_2d"]) == 4
        and it.get("label") in index
    ]
    if not good:
        return 0.0
    p = np.array([it["bbox_2d"] for it in good], np.float64)
    ok = (p[:, 2] >= p[:, 0]) & (p[:, 3] >= p[:, 1])
    p, pl = p[ok], np.array([index[it["label"]] for it in good])[ok]
    if not len(p):
        return 0.0
    reward = 0.25 * len(p) / len(items)
    g, gl = np.array(target["boxes"]), np.array([index[s] for s in target["labels"]])
    lt, rb = np.maximum(p[:, None, :2], g[None, :, :2]), np.minimum(p[:, None, 2:], g[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    union = np.prod(p[:, 2:] - p[:, :2], -1)[:, None] + np.prod(g[:, 2:] - g[:, :2], -1) - inter
    iou = inter / (union + 1e-8)
    lo, hi = np.minimum(p[:, None, :2], g[None, :, :2]), np.maximum(p[:, None, 2:], g[None, :, 2:])
    hull = (hi - lo).prod(-1) + 1e-8
    giou = iou - (hull - union) / hull
    pc = np.concatenate([(p[:, :2] + p[:, 2:]) / 2, p[:, 2:] - p[:, :2]], 1)  # cx, cy, w, h
    gc = np.concatenate([(g[:, :2] + g[:, 2:]) / 2, g[:, 2:] - g[:, :2]], 1)
    prob = np.where(pl[:, None] == gl[None], math.e, 1.0) / (math.e + 79)
    cost = 5 * np.abs(pc[:, None] - gc[None]).sum(-1) - prob - 2 * giou
    r, c = linear_sum_assignment(cost)
    keep = iou[r, c] > 0.5
    m = int(keep.sum())
    if m == 0:
        return reward
    precision, recall = m / len(p), m / len(g)
    reward += 0.75 * 2 * precision * recall / (precision + recall + 1e-8)
    reward += (pl[r][keep] == gl[c][keep]).mean() + iou[r, c][keep].mean()
    reward -= 0.5 * ((len(p) - m) / len(p) + (len(g) - m) / len(g))
    return float(np.clip(reward, 0.0, 3.0))


PATHS = {
    "batched": "rewards.score (batched, jitted)",
    "python": "per-completion Python",
    "numpy": "per-completion numpy",
}


def worker(path: str, completions: int, group_size: int, boxes: int, repeats: int) -> None:
    harness.set_torch_threads()
    texts, targets = make_batch(completions // group_size, group_size, boxes)
    per_completion = [t for t in targets for _ in range(group_size)]
    fn = {
        "batched": lambda: rewards.score("detection", texts, targets, group_size=group_size),
        "python": lambda: [detection_reward(c, t) for c, t in zip(texts, per_completion)],
        "numpy": lambda: [numpy_detection_reward(c, t) for c, t in zip(texts, per_completion)],
    }[path]
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    values = np.asarray(out, np.float64).tolist()
    harness.emit(times, work=len(texts), unit="completions", first_s=first, rewards=values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions", type=int, default=1024)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per worker")
    harness.add_arguments(parser)
    args = parser.parse_args()
    sizes = [str(v) for v in (args.completions, args.group_size, args.boxes, args.repeats)]
    if args.worker:
        return worker(args.worker, *map(int, sizes))
    common = [
        *("--completions", sizes[0], "--group-size", sizes[1]),
        *("--boxes", sizes[2], "--repeats", sizes[3]),
    ]
    me = (sys.executable, os.path.abspath(__file__))
    sides = [harness.Side(name, (*me, "--worker", name, *common)) for name in PATHS]
    report = harness.compare(
        sides, rounds=args.rounds, threads=args.threads, max_other_cores=args.max_other_cores
    )
    runs = {side.name: side.runs for side in report.sides}
    ours = np.asarray(runs["batched"][0]["rewards"])
    first = statistics.median(r["first_s"] for r in runs["batched"])
    extra = [
        (
            f"detection reward, {args.completions} completions, ~{args.boxes} boxes each "
            f"(G={args.group_size}, mean reward {ours.mean():.4f}); batched first call incl. "
            f"compile {first * 1e3:.0f} ms"
        )
    ]
    for name in ("python", "numpy"):
        diff = np.abs(ours - np.asarray(runs[name][0]["rewards"])).max()
        extra.append(f"  {PATHS[name]}: max |reward - batched| {diff:.1e}")
    harness.finish(report, baseline="python", strict=args.strict, extra=extra)


if __name__ == "__main__":
    main()
