"""Object detection (COCO style), Perception-R1 seed_spec A7.

Prompt (PR1's training text): `Please output bbox coordinates and names of {label set}.` with
the comma-separated category names (the example's `query`, else every name in `label_names`).
Answer, in Qwen2.5-VL's JSON for both families, because that is what the detection reward
parses: `[{"bbox_2d": [x1, y1, x2, y2], "label": name}, ...]`, pixels of the resized image for
qwen2_5_vl and 0–1000 for qwen2_vl. Target `{"boxes": [...], "labels": [name, ...]}`; reward
"detection" with `vocabulary = label_names`. Metrics: COCO AP / AR (faster-coco-eval, every
detection scored 1.0) and class-aware precision / recall / F1 at IoU 0.5.
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

PROMPT = "Please output bbox coordinates and names of {labels}."
# Boxes of category k are moved by k·_CATEGORY_SHIFT px so that the class-agnostic crowd
# matcher never pairs different categories: class-aware P / R / F1 with one matcher.
_CATEGORY_SHIFT = 1e7


@dataclasses.dataclass(frozen=True)
class DetectionTask(PromptedTask):
    """Every object with its category name; `example["labels"]` index `label_names`."""

    name: str = "detection"
    reward: str = "detection"
    metric_names: tuple[str, ...] = eval_metrics.COCO_METRIC_NAMES + ("precision", "recall", "F1")
    # What a predictions file must hold for `metrics` (eval.predictions).
    prediction_keys: ClassVar[tuple[str, ...]] = ("boxes", "labels")
    table_columns: tuple[tuple[str, str], ...] = (
        ("AP", "AP"),
        ("AP50", "AP50"),
        ("AP75", "AP75"),
        ("F1", "F1@0.5"),
    )
    skip_special_tokens: bool = True
    # The category names `example["labels"]` index; the data source supplies them
    # (data.sources.task_from_config).
    label_names: tuple[str, ...] = ()
    prompt: str = PROMPT
    score_detections: str = "constant"  # PR1: every box 1.0; or "likelihood" (its `scores`)

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        labels = " ".join(str(example.get("query", "")).split()) or ", ".join(self.label_names)
        return {"labels": labels}

    def target(self, example: Example, geometry: ImageGeometry, family: str) -> dict[str, Any]:
        return {
            "boxes": formats.policy_boxes(example, geometry, family).tolist(),
            "labels": self._names(example),
        }

    def reward_options(self, family: str) -> dict[str, Any]:
        check_family(family)
        return {"vocabulary": tuple(self.label_names)}

    def answer(self, example: Example, geometry: ImageGeometry, family: str) -> str:
        boxes = formats.policy_boxes(example, geometry, family)
        return formats.json_boxes(boxes, self._names(example))

    def predict(self, completion: str, geometry: ImageGeometry, family: str) -> dict[str, Any]:
        vocabulary = {name: i for i, name in enumerate(self.label_names)}
        boxes, labels = formats.read_json_boxes(completion, vocabulary)
        return {
            "boxes": formats.to_list(formats.original_boxes(boxes, geometry, family)),
            "labels": [self.label_names[i] for i in labels],
        }

    def metrics(
        self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]
    ) -> dict[str, float]:
        gt, detections = self.coco_records(predictions, examples)
        scores = eval_metrics.coco_metrics(gt, detections)
        shifted_gt, shifted = _category_separated(gt), _category_separated(detections)
        # Shifted boxes lie far outside the image: matched without clipping.
        crowd = eval_metrics.crowd_metrics(shifted_gt, shifted, iou=0.5, protocol="inclusive")
        return {
            **scores,
            "precision": crowd["precision"],
            "recall": crowd["recall"],
            "F1": crowd["F1"],
        }

    def coco_records(
        self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]
    ) -> tuple[dict, list[dict]]:
        """COCO ground-truth dict and result list (category id = label index + 1).

        Ground truth keeps the dataset's per-box `iscrowd` (or TFDS's `is_crowd`; crowd regions
        are ignored by COCOeval) and `area` (COCO's size buckets use the segmentation area, not
        the box's) when the example has them. Every detection is scored 1.0 (PR1's protocol)
        unless `score_detections == "likelihood"`, which takes the prediction's `scores` (e.g.
        each box's sequence likelihood, `perception_rl.eval.box_scores`).
        """
        index = {name: i for i, name in enumerate(self.label_names)}
        annotations, detections = [], []
        for example, prediction in zip(examples, predictions, strict=True):
            image_id = example["image_id"]
            boxes = formats.xywh(example["boxes"])
            crowd = _per_box(example, ("iscrowd", "is_crowd"), len(boxes))
            area = _per_box(example, ("area",), len(boxes))
            for i, (box, label) in enumerate(zip(boxes, example["labels"], strict=True)):
                record = {"image_id": image_id, "category_id": int(label) + 1, "bbox": box}
                record["iscrowd"] = int(crowd[i]) if crowd is not None else 0
                if area is not None:
                    record["area"] = float(area[i])
                annotations.append(record)
            predicted = formats.xywh(prediction.get("boxes", ()))
            scores = self._scores(prediction, len(predicted))
            for box, name, score in zip(
                predicted, prediction.get("labels", ()), scores, strict=True
            ):
                detections.append(
                    {
                        "image_id": image_id,
                        "category_id": index[name] + 1,
                        "bbox": box,
                        "score": score,
                    }
                )
        gt = {
            "images": [{"id": e["image_id"]} for e in examples],
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.label_names)],
        }
        return gt, detections

    def _scores(self, prediction: dict[str, Any], count: int) -> list[float]:
        if self.score_detections == "constant":
            return [1.0] * count
        if self.score_detections != "likelihood":
            raise ValueError(
                f"score_detections {self.score_detections!r}; expected constant or likelihood."
            )
        scores = [float(s) for s in prediction.get("scores", ())]
        if len(scores) != count:
            raise ValueError(
                f"score_detections='likelihood' needs one score per box; got {len(scores)} "
                f"scores for {count} boxes (decode with box scores)."
            )
        return scores

    def _names(self, example: Example) -> list[str]:
        return [self.label_names[int(i)] for i in np.asarray(example["labels"]).reshape(-1)]


def _per_box(example: Example, keys: tuple[str, ...], count: int) -> np.ndarray | None:
    """The first of `keys` the example has, as one value per box; None when it has none."""
    for key in keys:
        if key in example:
            values = np.asarray(example[key], np.float64).reshape(-1)
            if len(values) != count:
                raise ValueError(f"example[{key!r}] has {len(values)} values for {count} boxes.")
            return values
    return None


def _category_separated(records):
    """Moves each box by its category's shift (ground-truth dict or detection list)."""

    def shifted(record):
        x, y, w, h = record["bbox"]
        return {**record, "bbox": [x + record["category_id"] * _CATEGORY_SHIFT, y, w, h]}

    if isinstance(records, dict):
        return {**records, "annotations": [shifted(r) for r in records["annotations"]]}
    return [shifted(r) for r in records]
