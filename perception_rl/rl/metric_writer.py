"""Per-step metrics to a JSONL file, TensorBoard and a progress bar (process 0 only).

`metrics.jsonl` holds one `{"step": n, name: value, ...}` line per step, written with Python's
shortest round-trip float repr, so two runs that compute the same numbers write the same bytes.
Wall-clock figures live under the `perf/` prefix; everything else is a pure function of the
config and the seed. When a run resumes from checkpoint k, lines after step k (written before
the run was killed) are dropped first, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import jax

PERF_PREFIX = "perf/"


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics JSONL file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate_after(path: str, step: int) -> None:
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short (a kill or a full disk mid-write); what follows is newer
            if record["step"] > step:
                break
            kept.append(line if line.endswith("\n") else line + "\n")
    with open(path, "w") as f:
        f.writelines(kept)


class MetricWriter:
    """Writes the metrics of each step; a no-op on every host but process 0.

    Attributes:
        path: the metrics JSONL file.
    """

    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int,
        start_step: int = 0,
        description: str = "train",
        postfix: tuple[str, ...] = (),
    ):
        """Opens (and, after a resume, truncates) the outputs under `workdir`.

        Args:
            workdir: run directory; writes `metrics.jsonl` and `tensorboard/`.
            total_steps: length of the progress bar.
            start_step: the step the run resumes after (0 for a fresh run).
            description: progress-bar label.
            postfix: metric names shown on the progress bar.
        """
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._enabled = jax.process_index() == 0
        self._postfix = postfix
        if not self._enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        _truncate_after(self.path, start_step)
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc=description,
            dynamic_ncols=True,
            mininterval=1.0,
        )

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Appends one step's scalars everywhere."""
        if not self._enabled:
            return
        values = {name: float(value) for name, value in sorted(metrics.items())}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for name, value in values.items():
            if math.isfinite(value):
                self._tensorboard.add_scalar(name, value, step)
        self._bar.update(step - self._bar.n)
        shown = {name: f"{values[name]:.4g}" for name in self._postfix if name in values}
        self._bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        if self._enabled:
            # The bar first: an error raised by TensorBoard's flush (a full disk) must print
            # on a line of its own, not after the bar's unfinished one.
            self._bar.close()
            self._tensorboard.close()
