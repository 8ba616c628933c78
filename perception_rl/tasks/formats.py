"""Answer syntax shared by the tasks: writing it, and reading it back with the rewards' parsers.

Two syntaxes exist, and each reward parses exactly one of them (seed_spec A4–A7, B3):

* Qwen2-VL spans:
  `<|object_ref_start|>name<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`;
* Qwen2.5-VL JSON: `[{"bbox_2d": [x1, y1, x2, y2], "label": "name"}, ...]`.

The numbers inside follow the policy family (`ImageGeometry.to_policy`), whichever syntax the
task's reward reads. Parsing always goes through `perception_rl.rewards.parse`, so a prediction
is read exactly as the reward read it during training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from perception_rl.rewards import parse
from perception_rl.tasks.base import ImageGeometry

OBJECT_REF = "<|object_ref_start|>{}<|object_ref_end|>"
BOX_SPAN = "<|box_start|>({},{}),({},{})<|box_end|>"
MAX_ABS_COORDINATE = 1e6  # The rewards' default: larger numbers are not coordinates.
MAX_BOXES = 512  # Boxes kept per completion, as the counting / detection rewards do.


def object_ref(name: str) -> str:
    """`<|object_ref_start|>name<|object_ref_end|>`."""
    return OBJECT_REF.format(name)


def box_spans(boxes: np.ndarray) -> str:
    """Concatenated `<|box_start|>(x1,y1),(x2,y2)<|box_end|>` spans, no separator (PR1)."""
    return "".join(BOX_SPAN.format(*(int(v) for v in box)) for box in boxes)


def json_boxes(boxes: np.ndarray, labels: Sequence[str] | None = None) -> str:
    """`[{"bbox_2d": [x1, y1, x2, y2], "label": name}, ...]` (labels omitted when None)."""
    items = []
    for i, box in enumerate(boxes):
        item = {"bbox_2d": [int(v) for v in box]}
        if labels is not None:
            item["label"] = labels[i]
        items.append(item)
    return json.dumps(items)


def to_list(boxes: np.ndarray) -> list[list[float]]:
    """JSON-able nested list of floats (rounded to 1e-3 px: enough, and short files)."""
    return np.round(np.asarray(boxes, np.float64), 3).tolist()


def read_first_box(completion: str) -> np.ndarray:
    """The grounding reward's box (`parse.first_box`), `[0, 4]` or `[1, 4]` float64."""
    found = parse.first_box([completion], rows=1, max_abs=MAX_ABS_COORDINATE)
    return found.boxes[0][found.valid[0]].astype(np.float64)


def read_box_spans(completion: str) -> np.ndarray:
    """The counting reward's boxes (`parse.qwen2_boxes`), `[n, 4]` float64."""
    found = parse.qwen2_boxes([completion], rows=1, max_boxes=MAX_BOXES, max_abs=MAX_ABS_COORDINATE)
    return found.boxes[0][found.valid[0]].astype(np.float64)


def read_json_boxes(
    text: str | None, vocabulary: Mapping[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The detection / DIP rewards' valid JSON elements (`parse.json_boxes`).

    Returns:
      (`[n, 4]` float64 boxes, `[n]` int vocabulary indices, -1 without a vocabulary).
    """
    found = parse.json_boxes(
        [text], rows=1, max_boxes=MAX_BOXES, max_abs=MAX_ABS_COORDINATE, vocabulary=vocabulary
    )
    valid = found.valid[0]
    return found.boxes[0][valid].astype(np.float64), found.labels[0][valid].astype(np.int64)


def policy_boxes(
    example: Mapping, geometry: ImageGeometry, family: str, key: str = "boxes"
) -> np.ndarray:
    """`example[key]` (original pixels) as the policy's integer boxes, `[n, 4]`."""
    boxes = np.asarray(example.get(key, ()), np.float64).reshape(-1, 4)
    return geometry.to_policy(boxes, family).reshape(-1, 4)


def original_boxes(boxes: np.ndarray, geometry: ImageGeometry, family: str) -> np.ndarray:
    """Policy-frame boxes `[n, 4]` back in original pixels."""
    return geometry.from_policy(np.asarray(boxes, np.float64).reshape(-1, 4), family).reshape(-1, 4)


def xywh(boxes) -> list[list[float]]:
    """`[x1, y1, x2, y2]` boxes as COCO `[x, y, w, h]` lists."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
