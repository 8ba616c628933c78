"""Crowded-scene detection with think / look / answer, DIP-R1 — a RECONSTRUCTION (seed_spec B3).

The DIP-R1 paper body (and so its prompt) was not available. The instruction below is this
project's reconstruction of the Think-Look-Answer protocol the abstract describes: reason about
the whole scene, name the ambiguous regions looked at closely, then answer with every instance:

    Detect every {label} in the image. Think about the whole scene in <think> </think>, list the
    ambiguous regions you look at closely in <look> </look>, then give the boxes of every
    {label} in <answer> </answer>. Write boxes as JSON: [{"bbox_2d": [x1, y1, x2, y2]}].

Answer: `<think>…</think>\\n<look>[…]</look>\\n<answer>[…]</answer>`, boxes as JSON `bbox_2d`
lists (the syntax the "dip" reward parses) in the family's numbers. For SFT the look block holds
the instances that overlap another instance most (IoU > 0, at most `max_look_boxes`, largest
overlap first): occlusion is what makes a crowd ambiguous. Target
`{"boxes": [...], "ignore": [...]}` with the ignore regions; reward "dip"; metrics: AP50, MR⁻²,
JI, recall, precision and F1 at IoU 0.5 with ignore regions, under `metric_protocol`:
"crowdhuman" (the official CrowdHuman conventions: boxes clipped to the image) by default,
"citypersons" for CityPersons' Reasonable setup (an optional per-box `example["visibility"]`
feeds its visibility rule); see `perception_rl.metrics.crowd`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from perception_rl import metrics as eval_metrics
from perception_rl.metrics import box_iou
from perception_rl.rewards import parse
from perception_rl.tasks import formats
from perception_rl.tasks.base import (
    Example,
    ImageGeometry,
    PromptedTask,
    check_family,
)

PROMPT = (
    "Detect every {label} in the image. Think about the whole scene in <think> </think>, "
    "list the ambiguous regions you look at closely in <look> </look>, then give the boxes "
    "of every {label} in <answer> </answer>. Write boxes as JSON: "
    '[{{"bbox_2d": [x1, y1, x2, y2]}}].'
)
THINK = "There are {count} {label} instances; {overlapping} of them overlap others."
TAGS = ("think", "look", "answer")


@dataclasses.dataclass(frozen=True)
class CrowdTask(PromptedTask):
    """Every instance of `example["query"]` in a crowd; `example["ignore_boxes"]` are ignored."""

    name: str = "crowd"
    reward: str = "dip"
    metric_names: tuple[str, ...] = ("AP50", "MR-2", "JI", "recall", "precision", "F1")
    # What a predictions file must hold for `metrics` (eval.predictions).
    prediction_keys: ClassVar[tuple[str, ...]] = ("boxes",)
    table_columns: tuple[tuple[str, str], ...] = (
        ("AP50", "AP50"),
        ("MR-2", "MR⁻²↓"),
        ("JI", "JI"),
        ("recall", "Recall"),
        ("precision", "Precision"),
        ("F1", "F1"),
    )
    skip_special_tokens: bool = True
    max_look_boxes: int = 8  # The dip reward's default: only that many look boxes count.
    metric_protocol: str = "crowdhuman"  # a key of metrics.crowd.PROTOCOLS
    prompt: str = PROMPT

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"label": _label(example)}

    def target(self, example: Example, geometry: ImageGeometry, family: str) -> dict[str, Any]:
        return {
            "boxes": formats.policy_boxes(example, geometry, family).tolist(),
            "ignore": formats.policy_boxes(example, geometry, family, "ignore_boxes").tolist(),
        }

    def reward_options(self, family: str) -> dict[str, Any]:
        check_family(family)
        return {"max_look_boxes": self.max_look_boxes}

    def answer(self, example: Example, geometry: ImageGeometry, family: str) -> str:
        boxes = formats.policy_boxes(example, geometry, family)
        look = self.look_boxes(np.asarray(example["boxes"], np.float64).reshape(-1, 4))
        think = THINK.format(count=len(boxes), label=_label(example), overlapping=len(look))
        return (
            f"<think>{think}</think>\n<look>{formats.json_boxes(boxes[look])}</look>\n"
            f"<answer>{formats.json_boxes(boxes)}</answer>"
        )

    def look_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Indices of the instances to look at: most-overlapped first, at most max_look_boxes."""
        iou = box_iou(boxes[:, None], boxes[None])
        np.fill_diagonal(iou, 0.0)
        overlap = iou.max(1, initial=0.0)
        order = np.argsort(-overlap, kind="stable")
        return order[overlap[order] > 0][: self.max_look_boxes]

    def predict(self, completion: str, geometry: ImageGeometry, family: str) -> dict[str, Any]:
        blocks = parse.tagged_blocks([completion], TAGS, rows=1).contents
        answer, _ = formats.read_json_boxes(blocks["answer"][0])
        look, _ = formats.read_json_boxes(blocks["look"][0])
        return {
            "boxes": formats.to_list(formats.original_boxes(answer, geometry, family)),
            "look": formats.to_list(formats.original_boxes(look, geometry, family)),
        }

    def metrics(
        self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]
    ) -> dict[str, float]:
        annotations, detections, images = [], [], []
        for example, prediction in zip(examples, predictions, strict=True):
            image_id = example["image_id"]
            height, width = _image_hw(example)
            images.append({"id": image_id, "width": width, "height": height})
            boxes = formats.xywh(example.get("boxes", ()))
            visibility = np.asarray(example.get("visibility", np.ones(len(boxes))), np.float64)
            annotations += [
                {"image_id": image_id, "bbox": box, "iscrowd": 0, "vis_ratio": float(v)}
                for box, v in zip(boxes, visibility.reshape(-1), strict=True)
            ]
            annotations += [
                {"image_id": image_id, "bbox": box, "iscrowd": 1}
                for box in formats.xywh(example.get("ignore_boxes", ()))
            ]
            detections += [
                {"image_id": image_id, "bbox": box}
                for box in formats.xywh(prediction.get("boxes", ()))
            ]
        gt = {"images": images, "annotations": annotations}
        return eval_metrics.crowd_metrics(gt, detections, iou=0.5, protocol=self.metric_protocol)


def _image_hw(example: Example) -> tuple[int, int]:
    """(height, width) of the original image: the runner's annotation keeps `image_hw`."""
    if "image_hw" in example:
        return tuple(int(v) for v in example["image_hw"])
    return tuple(int(v) for v in np.shape(example["image"])[:2])


def _label(example: Example) -> str:
    return " ".join(str(example["query"]).split())
