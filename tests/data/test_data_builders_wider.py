"""`wider_pedestrian` builder: annotation and ignore text files in the challenge's line format."""

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from builder_fixtures import build, read, write_image

from perception_rl.data.builders import raw


def write_wider(root, lines=None):
    root.mkdir(parents=True)
    lines = lines or [
        "img00001.jpg 1 10 20 5 15 2 30 0 10 25",
        "ad00002.jpg",  # a driving scene without boxes
        "img00003.jpg 1 45 5 10 40",  # crosses the right border of the 50-wide image
    ]
    (root / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "val_ignore.txt").write_text("img00001.jpg 0 0 8 8 40 30 5 5\nad00002.jpg 1 2 3 4\n")
    for name in ("img00001.jpg", "ad00002.jpg", "img00003.jpg"):
        write_image(root / "images" / name, 50, 40)
    return root


def test_classes_boxes_and_ignore_regions(tmp_path):
    builder = build("wider_pedestrian", write_wider(tmp_path / "raw"), tmp_path / "out")
    assert builder.info.metadata["label_names"] == ["pedestrian", "cyclist"]
    first, second, third = read("wider_pedestrian", "validation", tmp_path / "out")
    np.testing.assert_array_equal(first["boxes"], [[10, 20, 15, 35], [30, 0, 40, 25]])
    np.testing.assert_array_equal(first["labels"], [0, 1])
    np.testing.assert_array_equal(first["ignore_boxes"], [[0, 0, 8, 8], [40, 30, 45, 35]])
    assert second["boxes"].shape == (0, 4)
    np.testing.assert_array_equal(second["ignore_boxes"], [[1, 2, 4, 6]])
    np.testing.assert_array_equal(third["boxes"], [[45, 5, 55, 45]])
    assert (third["image_id"], third["image_name"], third["query"]) == (
        2,
        "images/img00003.jpg",
        "pedestrian",
    )


def test_no_class_config_and_a_wrong_layout(tmp_path):
    root = write_wider(
        tmp_path / "raw", ["img00001.jpg 10 20 5 15", "ad00002.jpg", "img00003.jpg 1 2 3 4 5 6 7 8"]
    )
    build("wider_pedestrian/no_class", root, tmp_path / "out")
    first, _, third = read("wider_pedestrian/no_class", "validation", tmp_path / "out")
    np.testing.assert_array_equal(first["boxes"], [[10, 20, 15, 35]])
    np.testing.assert_array_equal(third["labels"], [0, 0])
    # The default layout expects groups of five: the first line has four numbers.
    with pytest.raises(raw.RawDataError, match=r"val_annotations.txt line 1: 4 numbers"):
        build("wider_pedestrian", root, tmp_path / "out2")
