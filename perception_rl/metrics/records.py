"""COCO-format ground truth and detections, checked and turned into numpy arrays.

`coco_metrics` and `crowd_metrics` read the same input formats: a COCO ground-truth dict
(`images`, `annotations`, `categories`) and a list of COCO result dicts. Each record is checked
here once, so that bad input fails with a message naming the offending record instead of an
assertion deep inside an evaluator (or, worse, a silently skewed number).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from perception_rl.errors import DataError

_MAX_REPR = 200  # Characters of a record shown in an error message.


class RecordError(DataError):
    """A ground-truth or detection record that cannot be evaluated."""


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """Checked COCO ground truth; annotation arrays are in input order.

    Attributes:
      image_ids: [I] image ids in the order of `gt['images']`.
      category_ids: [C] category ids (empty when categories were not requested).
      image_id: [A] image id of each annotation.
      category_id: [A] category id of each annotation (-1 when categories were not requested).
      boxes: [A, 4] float64 `[x, y, w, h]` boxes in pixels.
      area: [A] area used for COCO's size ranges (`w * h` when the record has none).
      iscrowd: [A] bool; crowd / ignore regions.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    image_id: np.ndarray
    category_id: np.ndarray
    boxes: np.ndarray
    area: np.ndarray
    iscrowd: np.ndarray


@dataclasses.dataclass(frozen=True)
class Detections:
    """Checked COCO results, in input order.

    Attributes:
      image_id: [D] image id of each detection.
      category_id: [D] category id (-1 when categories were not requested).
      boxes: [D, 4] float64 `[x, y, w, h]` boxes in pixels.
      scores: [D] confidence; 1.0 where the record has none (an LLM gives no scores).
    """

    image_id: np.ndarray
    category_id: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray


def load_ground_truth(gt: Any, *, with_categories: bool) -> GroundTruth:
    """Checks a COCO ground-truth dict and returns its annotations as arrays.

    Annotation `id`s are not read: evaluators use them only as match markers, so the callers
    renumber annotations themselves (COCO's id 0 would otherwise read as "unmatched").

    Args:
      gt: dict with `images` (each with an integer `id`), `annotations` (each with `image_id`,
        `bbox` `[x, y, w, h]`, optional `area`, optional `iscrowd` 0/1 and, if `with_categories`,
        `category_id`) and, if `with_categories`, `categories` (each with an integer `id`).
      with_categories: whether categories are required and checked.

    Returns:
      The checked ground truth.

    Raises:
      RecordError: naming the first malformed record, or when there are no images.
    """
    if not isinstance(gt, Mapping):
        raise RecordError(f"gt must be a COCO-format dict, got {type(gt).__name__}.")
    image_ids = _unique_ids(_list_field(gt, "images"), "gt['images']")
    if not len(image_ids):
        raise RecordError("gt['images'] is empty: there is nothing to evaluate.")
    category_ids = (
        _unique_ids(_list_field(gt, "categories"), "gt['categories']")
        if with_categories
        else np.zeros(0, np.int64)
    )
    images, categories = set(image_ids.tolist()), set(category_ids.tolist())
    image_of, category_of, values = [], [], []
    for i, ann in enumerate(_list_field(gt, "annotations")):
        where = f"gt['annotations'][{i}]"
        box = _box(ann, where)
        area = ann.get("area", box[2] * box[3])
        if not _is_real(area) or area < 0:
            raise _error(where, ann, f"area {area!r} is not a finite number >= 0")
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1):  # True / False compare equal to 1 / 0.
            raise _error(where, ann, f"iscrowd {iscrowd!r} is not 0 or 1")
        image_of.append(_known_id(ann, "image_id", images, where, "gt['images']"))
        category_of.append(
            _known_id(ann, "category_id", categories, where, "gt['categories']")
            if with_categories
            else -1
        )
        values.append((*box, area, iscrowd))
    values = np.array(values, np.float64).reshape(len(values), 6)
    return GroundTruth(
        image_ids=image_ids,
        category_ids=category_ids,
        image_id=np.array(image_of, np.int64),
        category_id=np.array(category_of, np.int64),
        boxes=values[:, :4],
        area=values[:, 4],
        iscrowd=values[:, 5].astype(bool),
    )


def load_detections(detections: Any, truth: GroundTruth, *, with_categories: bool) -> Detections:
    """Checks COCO result dicts against the ground truth they will be scored on.

    Args:
      detections: sequence of dicts with `image_id`, `bbox` `[x, y, w, h]`, optional `score`
        (default 1.0) and, if `with_categories`, `category_id`.
      truth: the checked ground truth; every detection must name one of its images (and
        categories).
      with_categories: whether `category_id` is required and checked.

    Returns:
      The checked detections.

    Raises:
      RecordError: naming the first malformed detection.
    """
    if isinstance(detections, (str, bytes, Mapping)) or not isinstance(detections, Sequence):
        raise RecordError(
            f"detections must be a list of COCO result dicts, got {type(detections).__name__}."
        )
    images, categories = set(truth.image_ids.tolist()), set(truth.category_ids.tolist())
    image_of, category_of, values = [], [], []
    for i, det in enumerate(detections):
        where = f"detections[{i}]"
        box = _box(det, where)
        score = det.get("score", 1.0)
        if not _is_real(score):
            raise _error(where, det, f"score {score!r} is not a finite number")
        image_of.append(_known_id(det, "image_id", images, where, "gt['images']"))
        category_of.append(
            _known_id(det, "category_id", categories, where, "gt['categories']")
            if with_categories
            else -1
        )
        values.append((*box, score))
    values = np.array(values, np.float64).reshape(len(values), 5)
    return Detections(
        image_id=np.array(image_of, np.int64),
        category_id=np.array(category_of, np.int64),
        boxes=values[:, :4],
        scores=values[:, 4],
    )


def _list_field(gt: Mapping, key: str) -> Sequence:
    value = gt.get(key)
    if not isinstance(value, (list, tuple)):
        raise RecordError(f"gt[{key!r}] must be a list, got {type(value).__name__}.")
    return value


def _unique_ids(records: Sequence, where: str) -> np.ndarray:
    ids, seen = [], set()
    for i, record in enumerate(records):
        if not isinstance(record, Mapping) or not _is_int(record.get("id")):
            raise _error(f"{where}[{i}]", record, "has no integer 'id'")
        if record["id"] in seen:
            raise _error(f"{where}[{i}]", record, f"repeats id {record['id']}")
        seen.add(record["id"])
        ids.append(record["id"])
    return np.array(ids, np.int64)


def _box(record: Any, where: str) -> tuple[float, float, float, float]:
    if not isinstance(record, Mapping):
        raise _error(where, record, "is not a dict")
    box = record.get("bbox")
    if (
        not isinstance(box, (list, tuple, np.ndarray))
        or len(box) != 4
        or not all(_is_real(v) for v in box)
    ):
        raise _error(where, record, "has no 'bbox' of 4 finite numbers [x, y, w, h]")
    if box[2] < 0 or box[3] < 0:
        raise _error(where, record, "has a bbox with negative width or height")
    return tuple(float(v) for v in box)


def _known_id(record: Mapping, key: str, known: set, where: str, source: str) -> int:
    value = record.get(key)
    if not _is_int(value):
        raise _error(where, record, f"has no integer {key!r}")
    if value not in known:
        raise _error(where, record, f"{key} {value} is not in {source}")
    return int(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    if type(value) in (int, float):  # Fast path for JSON numbers; ABC checks are slow.
        return math.isfinite(value)
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _error(where: str, record: Any, problem: str) -> RecordError:
    text = repr(record)
    if len(text) > _MAX_REPR:
        text = text[:_MAX_REPR] + "...}"
    return RecordError(f"{where} {text}: {problem}.")
