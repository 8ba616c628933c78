"""Per-example scores and the paired bootstrap: is policy B better than policy A on a split?

    scores = per_example_scores(task, predictions, examples, "accuracy")  # [N] or None
    interval = paired_bootstrap(sft_scores, grpo_scores)  # {"delta", "low", "high", ...}

Both policies are scored on the same held-out examples, so the difference is resampled by
example (paired): the example-to-example variation both share cancels, which makes the interval
much tighter than two independent ±1.5-point errors would suggest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# The headline's value over the split and the mean of its per-example values agree this closely
# when the metric is a mean over examples (counting accuracy, grounding Acc@τ).
_DECOMPOSABLE_TOLERANCE = 1e-9


def headline(task) -> str:
    """The task's headline metric key (its first table column)."""
    return task.table_columns[0][0]


def per_example_scores(
    task, predictions: Sequence[Mapping], examples: Sequence[Mapping], key: str
) -> np.ndarray | None:
    """`task.metrics` of each example alone, float64 `[N]`; None when `key` is not a mean over
    examples (detection's AP or F1 pool the whole split), so no per-example value exists."""
    scores = np.array(
        [task.metrics([p], [e])[key] for p, e in zip(predictions, examples)], np.float64
    )
    whole = task.metrics(list(predictions), list(examples))[key]
    if not np.isfinite(scores).all() or abs(scores.mean() - whole) > _DECOMPOSABLE_TOLERANCE:
        return None
    return scores


def record_scores(task, records: Sequence[Mapping], key: str) -> dict[int, float] | None:
    """{image_id: per-example score} of eval `predictions.jsonl` records (their prediction and
    ground truth); None when `key` is not a mean over examples."""
    records = list(records)
    scores = per_example_scores(
        task, [r["prediction"] for r in records], [r["ground_truth"] for r in records], key
    )
    if scores is None:
        return None
    return {int(r["image_id"]): float(s) for r, s in zip(records, scores)}


def paired_bootstrap(
    before: Sequence[float],
    after: Sequence[float],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap interval of mean(after − before) over paired examples.

    Returns:
      `{"delta", "low", "high", "confidence", "resamples", "num_examples"}`.

    Raises:
      ValueError: unpaired or empty inputs, or a confidence outside (0, 1).
    """
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    if before.shape != after.shape or before.ndim != 1 or not len(before):
        raise ValueError(
            f"paired scores must be two [N>0] arrays, got {before.shape}, {after.shape}"
        )
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError(f"confidence {confidence} must be in (0, 1), resamples {resamples} >= 1")
    diff = after - before
    draws = np.random.default_rng(seed).integers(0, len(diff), (int(resamples), len(diff)))
    means = diff[draws].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {
        "delta": float(diff.mean()),
        "low": float(low),
        "high": float(high),
        "confidence": float(confidence),
        "resamples": int(resamples),
        "num_examples": len(diff),
    }
