"""`pr1_grounding` builder: Perception-R1's refcoco_320k parquet and eval JSON fixtures."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("tensorflow_datasets")

from builder_fixtures import build, read, write_image

from perception_rl.data.builders import raw


def write_pr1(root):
    (root / "refcoco_320k" / "data").mkdir(parents=True)
    jpeg = write_image(root / "tmp" / "a.jpg", 50, 40, seed=1)
    png = write_image(root / "tmp" / "b.png", 30, 20, fmt="PNG", seed=2)
    rows = [
        {
            "problem": "the dog on the left",
            "solution": "[1,2,30,40]",
            "image": {"bytes": jpeg, "path": "COCO_train2014_000000000009.jpg"},
        },
        {
            "problem": "red car",
            "solution": "[0.5, 1.5, 29.5, 19.5]",
            "image": {"bytes": png, "path": None},
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "refcoco_320k" / "data" / "train-0.parquet")
    write_image(root / "images" / "COCO_train2014_000000000042.jpg", 64, 48, seed=3)
    items = [
        {
            "image": "coco/train2014/COCO_train2014_000000000042.jpg",
            "problem": "man in blue",
            "solution": [10, 12, 70, 40],
            "normalized_solution": [156, 250, 1093, 833],
        },
    ]
    (root / "refcocog_val.json").write_text(json.dumps(items))
    return root


def test_train_parquet_and_eval_json_splits(tmp_path):
    builder = build("pr1_grounding", write_pr1(tmp_path / "raw"), tmp_path / "out")
    assert sorted(builder.info.splits) == ["refcocog_val", "train"]
    first, second = read("pr1_grounding", "train", tmp_path / "out")
    assert (first["query"], first["image_id"], first["width"], first["height"]) == (
        "the dog on the left",
        0,
        50,
        40,
    )
    np.testing.assert_array_equal(first["boxes"], [[1, 2, 30, 40]])
    assert first["image_name"] == "COCO_train2014_000000000009.jpg"
    np.testing.assert_array_equal(second["boxes"], [[0.5, 1.5, 29.5, 19.5]])
    assert second["image"].shape == (20, 30, 3) and second["task"] == "grounding"
    (val,) = read("pr1_grounding", "refcocog_val", tmp_path / "out")
    # x2 = 70 is past the 64-pixel border: stored as given.
    np.testing.assert_array_equal(val["boxes"], [[10, 12, 70, 40]])
    assert (val["query"], val["image_name"]) == (
        "man in blue",
        "images/COCO_train2014_000000000042.jpg",
    )


def test_bad_solution_names_file_and_item(tmp_path):
    root = write_pr1(tmp_path / "raw")
    items = json.loads((root / "refcocog_val.json").read_text())
    items.append({**items[0], "solution": "[1, 2, 3]"})
    (root / "refcocog_val.json").write_text(json.dumps(items))
    with pytest.raises(raw.RawDataError, match=r"refcocog_val.json item 1: solution"):
        build("pr1_grounding", root, tmp_path / "out")


def test_missing_everything_names_a_file_and_the_release(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "x").write_text("")
    with pytest.raises(raw.MissingFileError, match=r"refcoco_val.json.*Kangheng/refcoco_320k"):
        build("pr1_grounding", tmp_path / "raw", tmp_path / "out")
