"""`coco_detection` builder: instances_*2017.json fixture with crowd boxes and category-id gaps."""

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from builder_fixtures import build, read, write_image

from perception_rl.data.builders import raw

CATEGORIES = [  # ids 1, 3, 90: gaps, and listed out of order.
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
]


def instances(split="val"):
    return {
        "info": {"year": 2017},
        "licenses": [],
        "images": [
            {
                "id": 139,
                "file_name": "000000000139.jpg",
                "width": 64,
                "height": 48,
                "license": 2,
                "coco_url": "http://x",
            },
            {"id": 285, "file_name": "000000000285.jpg", "width": 32, "height": 40},
            {"id": 632, "file_name": "000000000632.jpg", "width": 50, "height": 30},  # empty
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 139,
                "category_id": 1,
                "bbox": [1.5, 2.25, 10.0, 20.5],
                "area": 150.75,
                "iscrowd": 0,
                "segmentation": [[1, 2, 3, 4, 5, 6]],
            },
            {
                "id": 2,
                "image_id": 285,
                "category_id": 90,
                "bbox": [0, 0, 32, 40],
                "area": 900.0,
                "iscrowd": 0,
                "segmentation": [[0, 0, 1, 1, 2, 2]],
            },
            # A crowd annotation (RLE segmentation), kept with iscrowd = 1.
            {
                "id": 3,
                "image_id": 139,
                "category_id": 1,
                "bbox": [30, 10, 30, 30],
                "area": 512.0,
                "iscrowd": 1,
                "segmentation": {"counts": [1, 2], "size": [48, 64]},
            },
            {
                "id": 4,
                "image_id": 139,
                "category_id": 3,
                "bbox": [60, 40, 8, 9],  # past border
                "area": 40.0,
                "iscrowd": 0,
                "segmentation": [],
            },
        ],
        "categories": CATEGORIES,
    }


def write_coco(root, data=None, gray=False):
    data = instances() if data is None else data
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    for image in data["images"]:
        mode = "L" if gray and image["id"] == 285 else "RGB"
        write_image(
            root / "val2017" / image["file_name"], image["width"], image["height"], mode=mode
        )
    return root


def test_every_image_with_crowd_area_and_gapped_category_ids(tmp_path):
    builder = build("coco_detection", write_coco(tmp_path / "raw", gray=True), tmp_path / "out")
    # Sorted by category id: 1 person, 3 car, 90 toothbrush.
    assert builder.info.metadata["label_names"] == ["person", "car", "toothbrush"]
    assert builder.info.metadata["category_ids"] == [1, 3, 90]
    first, second, third = read("coco_detection", "validation", tmp_path / "out")
    assert [e["image_id"] for e in (first, second, third)] == [139, 285, 632]
    np.testing.assert_array_equal(
        first["boxes"], [[1.5, 2.25, 11.5, 22.75], [30, 10, 60, 40], [60, 40, 68, 49]]
    )
    np.testing.assert_array_equal(first["labels"], [0, 0, 1])
    np.testing.assert_array_equal(first["iscrowd"], [0, 1, 0])
    np.testing.assert_array_equal(first["area"], [150.75, 512.0, 40.0])
    assert (first["width"], first["height"], first["image_name"]) == (
        64,
        48,
        "val2017/000000000139.jpg",
    )
    np.testing.assert_array_equal(second["boxes"], [[0, 0, 32, 40]])
    np.testing.assert_array_equal(second["labels"], [2])  # toothbrush, the last index
    assert second["image"].shape == (40, 32, 3)  # a grayscale JPEG reads as RGB
    assert third["boxes"].shape == (0, 4) and third["labels"].shape == (0,)
    assert first["task"] == "detection"


def test_unknown_category_and_size_mismatch_name_the_record(tmp_path):
    data = instances()
    data["annotations"][1]["category_id"] = 2
    with pytest.raises(raw.RawDataError, match=r"annotations\[1\] \(id 2\) has unknown category"):
        build("coco_detection", write_coco(tmp_path / "a", data), tmp_path / "out_a")
    data = instances()
    root = write_coco(tmp_path / "b", data)
    write_image(root / "val2017" / "000000000285.jpg", 33, 40)
    with pytest.raises(raw.RawDataError, match=r"image_id 285 .*33x40.*32x40"):
        build("coco_detection", root, tmp_path / "out_b")


def test_malformed_json_and_missing_file_are_named(tmp_path):
    root = tmp_path / "raw"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text('{"categories": [{"id": 1,')
    with pytest.raises(raw.RawDataError, match=r"instances_val2017.json: malformed JSON"):
        build("coco_detection", root, tmp_path / "out")
    (root / "annotations" / "instances_val2017.json").unlink()
    (root / "x").write_text("")
    with pytest.raises(raw.MissingFileError, match=r"instances_val2017.json.*cocodataset.org"):
        build("coco_detection", root, tmp_path / "out")
