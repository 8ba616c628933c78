"""Visual grounding (referring expressions, RefCOCO-style), Perception-R1 seed_spec A4.

Prompt (PR1's training text):
`Output the bounding box of the {expression} in the image.` A leading article of the expression
is dropped so "the blue square" does not read "of the the blue square".

Answer, in the family's native grounding syntax:
  qwen2_vl:   `<|object_ref_start|>{expression}<|object_ref_end|>`
              `<|box_start|>(x1,y1),(x2,y2)<|box_end|>`
              with 0–1000 coordinates (reward `format_check="strict"`);
  qwen2_5_vl: `[{"bbox_2d": [x1, y1, x2, y2], "label": "{expression}"}]` in resized-image
              pixels (reward `format_check="json"`).
Target `{"box": [x1, y1, x2, y2]}`; reward "grounding" (IoU² + format); metrics Acc@0.5 / 0.75 /
0.95, their mean, centre accuracy and mean IoU per expression.
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
    check_family,
)

PROMPT = "Output the bounding box of the {expression} in the image."


@dataclasses.dataclass(frozen=True)
class GroundingTask(PromptedTask):
    """One referring expression (`example["query"]`) → its single box (`example["boxes"][0]`)."""

    name: str = "grounding"
    reward: str = "grounding"
    metric_names: tuple[str, ...] = (
        "acc@0.1",
        "acc@0.3",
        "acc@0.5",
        "acc@0.75",
        "acc@0.95",
        "acc_mean",
        "centre_acc",
        "mean_iou",
    )
    # What a predictions file must hold for `metrics` (eval.predictions).
    prediction_keys: ClassVar[tuple[str, ...]] = ("boxes",)
    table_columns: tuple[tuple[str, str], ...] = (
        ("acc@0.5", "Acc@0.5"),
        ("acc@0.75", "Acc@0.75"),
        ("acc@0.95", "Acc@0.95"),
        ("acc_mean", "Avg"),
    )
    skip_special_tokens: bool = False
    prompt: str = PROMPT

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"expression": expression(example)}

    def target(self, example: Example, geometry: ImageGeometry, family: str) -> dict[str, Any]:
        return {"box": _referent(example, geometry, family).tolist()}

    def reward_options(self, family: str) -> dict[str, Any]:
        return {"format_check": "strict" if check_family(family) == "qwen2_vl" else "json"}

    def answer(self, example: Example, geometry: ImageGeometry, family: str) -> str:
        box = _referent(example, geometry, family)
        if family == "qwen2_vl":
            return formats.object_ref(expression(example)) + formats.box_spans(box[None])
        return formats.json_boxes(box[None], [expression(example)])

    def predict(self, completion: str, geometry: ImageGeometry, family: str) -> dict[str, Any]:
        box = formats.read_first_box(completion)
        return {"boxes": formats.to_list(formats.original_boxes(box, geometry, family))}

    def metrics(
        self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]
    ) -> dict[str, float]:
        # An unparsed output is a NaN box: wrong at every threshold, IoU 0.
        pred = np.array(
            [p["boxes"][0] if p.get("boxes") else [np.nan] * 4 for p in predictions], np.float64
        ).reshape(-1, 4)
        gt = np.array([np.asarray(e["boxes"], np.float64).reshape(-1, 4)[0] for e in examples])
        return eval_metrics.grounding_metrics(pred, gt.reshape(-1, 4))


def expression(example: Example) -> str:
    """The referring expression without a leading "the " (the template already says "the")."""
    query = " ".join(str(example["query"]).split())
    return query[4:] if query.lower().startswith("the ") else query


def _referent(example: Example, geometry: ImageGeometry, family: str) -> np.ndarray:
    boxes = formats.policy_boxes(example, geometry, family)
    if len(boxes) != 1:
        raise ValueError(
            f"Grounding example {example.get('image_id')!r} needs exactly one box, "
            f"got {len(boxes)}."
        )
    return boxes[0]
