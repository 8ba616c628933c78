"""`citypersons` builder: an anno_val.mat fixture written with scipy in the released structure."""

import numpy as np
import pytest
import scipy.io

pytest.importorskip("tensorflow_datasets")

from builder_fixtures import build, read, write_image

from perception_rl.data.builders import raw

ROWS = np.array(
    [
        # class, x1, y1, w, h, id, x1_vis, y1_vis, w_vis, h_vis
        [1, 10, 5, 20, 60, 1, 10, 5, 20, 50],  # pedestrian, 60 tall, 83% visible: reasonable
        [1, 40, 5, 10, 40, 2, 40, 5, 10, 40],  # pedestrian, 40 tall: not reasonable
        [1, 60, 0, 20, 80, 3, 60, 0, 10, 40],  # pedestrian, 25% visible: not reasonable
        [2, 85, 10, 10, 55, 4, 85, 10, 10, 55],  # rider
        [0, 0, 50, 30, 20, 0, 0, 50, 30, 20],  # ignore region
        [5, 90, 40, 20, 30, 0, 90, 40, 20, 30],  # person group, crosses the border (x2 110)
    ],
    np.float64,
)


def write_citypersons(root, rows=ROWS):
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0] = {
        "cityname": "frankfurt",
        "im_name": "frankfurt_000000_000294_leftImg8bit.png",
        "bbs": rows,
    }
    cells[0, 1] = {
        "cityname": "lindau",
        "im_name": "lindau_000000_000019_leftImg8bit.png",
        "bbs": np.zeros((0, 10)),
    }
    (root / "annotations").mkdir(parents=True)
    scipy.io.savemat(root / "annotations" / "anno_val.mat", {"anno_val_aligned": cells})
    for city, name in (
        ("frankfurt", "frankfurt_000000_000294"),
        ("lindau", "lindau_000000_000019"),
    ):
        write_image(
            root / "leftImg8bit" / "val" / city / f"{name}_leftImg8bit.png", 100, 80, fmt="PNG"
        )
    return root


def test_all_persons_and_ignore_classes(tmp_path):
    builder = build("citypersons", write_citypersons(tmp_path / "raw"), tmp_path / "out")
    assert builder.info.metadata["label_names"] == [
        "pedestrian",
        "rider",
        "sitting person",
        "person (other)",
    ]
    first, second = read("citypersons", "validation", tmp_path / "out")
    np.testing.assert_array_equal(
        first["boxes"], [[10, 5, 30, 65], [40, 5, 50, 45], [60, 0, 80, 80], [85, 10, 95, 65]]
    )
    np.testing.assert_array_equal(first["labels"], [0, 0, 0, 1])
    np.testing.assert_array_equal(first["ignore_boxes"], [[0, 50, 30, 70], [90, 40, 110, 70]])
    assert (
        first["image_name"] == "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    )
    assert (first["width"], first["height"], first["task"]) == (100, 80, "crowd")
    assert second["boxes"].shape == (0, 4) and second["image_id"] == 1


def test_reasonable_subset_ignores_the_rest(tmp_path):
    build("citypersons/reasonable", write_citypersons(tmp_path / "raw"), tmp_path / "out")
    first, _ = read("citypersons/reasonable", "validation", tmp_path / "out")
    np.testing.assert_array_equal(first["boxes"], [[10, 5, 30, 65]])
    np.testing.assert_array_equal(first["labels"], [0])
    np.testing.assert_array_equal(
        first["ignore_boxes"],
        [[40, 5, 50, 45], [60, 0, 80, 80], [85, 10, 95, 65], [0, 50, 30, 70], [90, 40, 110, 70]],
    )


def test_unknown_class_names_the_record(tmp_path):
    rows = ROWS.copy()
    rows[2, 0] = 7
    with pytest.raises(raw.RawDataError, match=r"anno_val.mat record 0 .* bbs row 2: class 7"):
        build("citypersons", write_citypersons(tmp_path / "raw", rows), tmp_path / "out")
