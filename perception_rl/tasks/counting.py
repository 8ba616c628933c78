"""Visual counting as detect-then-count (PixMo-Count style), Perception-R1 seed_spec A5.

Prompt (PR1's code, no trailing period): `Output all the bounding boxes of the {label}`.
Answer, in Qwen2-VL's multi-box syntax for both families, because that is the only syntax the
counting reward's format gate accepts:

    <|object_ref_start|>{label}<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>...

Numbers follow the family: 0–1000 for qwen2_vl, resized-image pixels for qwen2_5_vl.
Target `{"points": [[x, y], ...], "frame": [W, H]}`: the centres of the boxes exactly as the
answer writes them, so the SFT answer scores the maximum 1.0, and the policy frame's size
(1000×1000, or the resized image), which the reward uses to measure distances per axis on
0–1000 (DESIGN §3). Reward "counting"; metric: exact-count accuracy (an
empty output is never correct).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from perception_rl import metrics as eval_metrics
from perception_rl.tasks import formats
from perception_rl.tasks.base import (
    Example,
    ImageGeometry,
    PromptedTask,
)

PROMPT = "Output all the bounding boxes of the {label}"


@dataclasses.dataclass(frozen=True)
class CountingTask(PromptedTask):
    """Every instance of `example["query"]` (a label) → one box per instance."""

    name: str = "counting"
    reward: str = "counting"
    metric_names: tuple[str, ...] = ("accuracy",)
    # What a predictions file must hold for `metrics` (eval.predictions).
    prediction_keys: ClassVar[tuple[str, ...]] = ("boxes",)
    table_columns: tuple[tuple[str, str], ...] = (("accuracy", "Acc"),)
    skip_special_tokens: bool = False
    prompt: str = PROMPT

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"label": _label(example)}

    def target(self, example: Example, geometry: ImageGeometry, family: str) -> dict[str, Any]:
        boxes = _instances(example, geometry, family)
        return {
            "points": ((boxes[:, :2] + boxes[:, 2:]) / 2).tolist(),
            "frame": [int(v) for v in geometry.frame_size(family)],
        }

    def answer(self, example: Example, geometry: ImageGeometry, family: str) -> str:
        boxes = _instances(example, geometry, family)
        return formats.object_ref(_label(example)) + formats.box_spans(boxes)

    def predict(self, completion: str, geometry: ImageGeometry, family: str) -> dict[str, Any]:
        boxes = formats.original_boxes(formats.read_box_spans(completion), geometry, family)
        return {"boxes": formats.to_list(boxes), "count": len(boxes)}

    def metrics(
        self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]
    ) -> dict[str, float]:
        counts = np.array([len(p.get("boxes", ())) for p in predictions], np.int64)
        return eval_metrics.counting_metrics(counts, np.array([count(e) for e in examples]))


def count(example: Example) -> int:
    """Ground-truth count: the dataset's `count` where it has one (PixMo-Count's val/test rows
    carry no points), else annotated boxes, else annotated points."""
    if example.get("count") is not None:
        return int(example["count"])
    boxes = np.asarray(example.get("boxes", ()), np.float64).reshape(-1, 4)
    return len(boxes) if len(boxes) else len(np.asarray(example.get("points", ())).reshape(-1, 2))


def _label(example: Example) -> str:
    return " ".join(str(example["query"]).split())


def _instances(example: Example, geometry: ImageGeometry, family: str) -> np.ndarray:
    """Policy-frame boxes of the instances; a points-only example gives zero-size boxes."""
    boxes = np.asarray(example.get("boxes", ()), np.float64).reshape(-1, 4)
    if not len(boxes):
        points = np.asarray(example.get("points", ()), np.float64).reshape(-1, 2)
        boxes = np.concatenate([points, points], axis=1)
    return geometry.to_policy(boxes, family).reshape(-1, 4)
