"""Bad ground truth or detections fail naming the record, in coco_metrics and crowd_metrics."""

import copy
import re

import pytest

from perception_rl.metrics import RecordError, coco_metrics, crowd_metrics

_GT = {
    "images": [{"id": 1}, {"id": 2}],
    "categories": [{"id": 1}, {"id": 7}],
    "annotations": [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [0, 0, 10, 10],
            "area": 100,
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 2,
            "category_id": 7,
            "bbox": [5, 5, 20, 20],
            "area": 400,
            "iscrowd": 0,
        },
    ],
}
_DETS = [
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
    {"image_id": 2, "category_id": 7, "bbox": [5, 5, 20, 20]},
]


def _set(path, value):
    """A copy of (gt, detections) with the item at `path` set (or deleted if value is ...)."""
    data = copy.deepcopy({"gt": _GT, "detections": _DETS})
    *parents, last = path
    target = data
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return data["gt"], data["detections"]


# (what is wrong, path, new value, message): shared by both metrics.
_BAD = [
    (
        "unknown image",
        ("detections", 1, "image_id"),
        99,
        (
            "detections[1] {'image_id': 99, 'category_id': 7, 'bbox': [5, 5, 20, 20]}: "
            "image_id 99 is not in gt['images']."
        ),
    ),
    (
        "string image id",
        ("detections", 0, "image_id"),
        "1",
        (
            "detections[0] {'image_id': '1', 'category_id': 1, 'bbox': [0, 0, 10, 10], 'score': 0.9}: "
            "has no integer 'image_id'."
        ),
    ),
    (
        "short bbox",
        ("detections", 0, "bbox"),
        [0, 0, 10],
        (
            "detections[0] {'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 10], 'score': 0.9}: "
            "has no 'bbox' of 4 finite numbers [x, y, w, h]."
        ),
    ),
    (
        "negative width",
        ("detections", 1, "bbox"),
        [5, 5, -20, 20],
        (
            "detections[1] {'image_id': 2, 'category_id': 7, 'bbox': [5, 5, -20, 20]}: "
            "has a bbox with negative width or height."
        ),
    ),
    (
        "nan score",
        ("detections", 0, "score"),
        float("nan"),
        (
            "detections[0] {'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 10, 10], 'score': nan}: "
            "score nan is not a finite number."
        ),
    ),
    ("detection not a dict", ("detections", 0), "oops", "detections[0] 'oops': is not a dict."),
    (
        "annotation without bbox",
        ("gt", "annotations", 1, "bbox"),
        ...,
        (
            "gt['annotations'][1] {'id': 2, 'image_id': 2, 'category_id': 7, 'area': 400, "
            "'iscrowd': 0}: has no 'bbox' of 4 finite numbers [x, y, w, h]."
        ),
    ),
    (
        "annotation of unknown image",
        ("gt", "annotations", 0, "image_id"),
        5,
        (
            "gt['annotations'][0] {'id': 1, 'image_id': 5, 'category_id': 1, 'bbox': [0, 0, 10, 10], "
            "'area': 100, 'iscrowd': 0}: image_id 5 is not in gt['images']."
        ),
    ),
    ("iscrowd 2", ("gt", "annotations", 0, "iscrowd"), 2, "}: iscrowd 2 is not 0 or 1."),
    ("negative area", ("gt", "annotations", 1, "area"), -1.0, "area -1.0 is not a finite"),
    (
        "image without id",
        ("gt", "images", 1),
        {"file_name": "x.jpg"},
        "gt['images'][1] {'file_name': 'x.jpg'}: has no integer 'id'.",
    ),
    (
        "repeated image id",
        ("gt", "images", 1),
        {"id": 1},
        "gt['images'][1] {'id': 1}: repeats id 1.",
    ),
    ("no annotation list", ("gt", "annotations"), ..., "gt['annotations'] must be a list"),
    ("no images", ("gt", "images"), [], "gt['images'] is empty"),
]


@pytest.mark.parametrize("metric", [coco_metrics, crowd_metrics])
@pytest.mark.parametrize("case, path, value, message", _BAD, ids=[case[0] for case in _BAD])
def test_bad_input_names_the_record(metric, case, path, value, message):
    gt, detections = _set(path, value)
    with pytest.raises(RecordError, match=re.escape(message)):
        metric(gt, detections)


def test_coco_checks_categories():
    gt, detections = _set(("detections", 1, "category_id"), 5)
    with pytest.raises(
        RecordError,
        match=re.escape(
            "detections[1] {'image_id': 2, 'category_id': "
            "5, 'bbox': [5, 5, 20, 20]}: category_id 5 "
            "is not in gt['categories']."
        ),
    ):
        coco_metrics(gt, detections)
    gt, detections = _set(("gt", "categories"), ...)
    with pytest.raises(RecordError, match=re.escape("gt['categories'] must be a list")):
        coco_metrics(gt, detections)
    # Crowd metrics are class-agnostic (these images have no size to clip to).
    assert crowd_metrics(gt, detections, protocol="inclusive")["recall"] == 1.0


@pytest.mark.parametrize("metric", [coco_metrics, crowd_metrics])
def test_wrong_containers(metric):
    with pytest.raises(RecordError, match="gt must be a COCO-format dict, got list"):
        metric([], _DETS)
    with pytest.raises(RecordError, match="detections must be a list of COCO result dicts"):
        metric(_GT, _DETS[0])


def test_long_records_are_shortened_in_messages():
    gt, detections = _set(("gt", "annotations", 0, "segmentation"), [list(range(1000))])
    gt["annotations"][0]["image_id"] = 9
    with pytest.raises(RecordError, match=r"gt\['annotations'\]\[0\] ") as error:
        coco_metrics(gt, detections)
    assert len(str(error.value)) < 300
