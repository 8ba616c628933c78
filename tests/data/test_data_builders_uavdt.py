"""`uavdt` builder: sequences, GT CSVs and ignore files; frames subsampled by the stride."""

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from builder_fixtures import build, read, write_image

from perception_rl.data.builders import raw


def write_uavdt(root, gt_lines=None, attributes=False):
    for sequence in ("M0101", "M1302"):
        for frame in range(1, 13):
            write_image(root / "UAV-benchmark-M" / sequence / f"img{frame:06d}.jpg", 60, 30)
    gt = root / "UAV-benchmark-MOTD_v1.0" / "GT"
    gt.mkdir(parents=True)
    gt_lines = gt_lines or [
        "1,1,10,5,8,4,1,1,1",
        "1,2,50,20,15,12,2,1,3",  # a bus past the right and bottom border
        "2,1,11,5,8,4,1,1,1",  # frame 2: dropped by stride 10
        "11,3,0,0,5,5,1,2,2",
    ]
    (gt / "M0101_gt_whole.txt").write_text("\n".join(gt_lines) + "\n")
    (gt / "M0101_gt_ignore.txt").write_text("1,-1,30,0,10,10,-1,-1,-1\n")
    (gt / "M1302_gt_whole.txt").write_text("11,1,1,1,2,2,1,1,2\n")
    if attributes:
        for split, sequence in (("train", "M0101"), ("test", "M1302")):
            (root / "M_attr" / split).mkdir(parents=True)
            (root / "M_attr" / split / f"{sequence}_attr.txt").write_text("1,0,0\n")
    return root


def test_stride_keeps_frames_1_and_11_with_boxes_labels_and_ignore(tmp_path):
    builder = build("uavdt", write_uavdt(tmp_path / "raw"), tmp_path / "out")
    assert builder.info.metadata["label_names"] == ["car", "truck", "bus"]
    examples = read("uavdt", "sequences", tmp_path / "out")
    assert [e["image_id"] for e in examples] == [
        101_000_001,
        101_000_011,
        1302_000_001,
        1302_000_011,
    ]
    first, eleventh, other_first, other_eleventh = examples
    np.testing.assert_array_equal(first["boxes"], [[10, 5, 18, 9], [50, 20, 65, 32]])
    np.testing.assert_array_equal(first["labels"], [0, 2])
    np.testing.assert_array_equal(first["ignore_boxes"], [[30, 0, 40, 10]])
    np.testing.assert_array_equal(eleventh["boxes"], [[0, 0, 5, 5]])
    np.testing.assert_array_equal(eleventh["labels"], [1])
    assert other_first["boxes"].shape == (0, 4)
    np.testing.assert_array_equal(other_eleventh["boxes"], [[1, 1, 3, 3]])
    assert first["image_name"] == "UAV-benchmark-M/M0101/img000001.jpg"
    assert (first["width"], first["height"]) == (60, 30)


def test_stride_5_and_attribute_splits(tmp_path):
    build("uavdt/stride5", write_uavdt(tmp_path / "raw", attributes=True), tmp_path / "out")
    train = read("uavdt/stride5", "train", tmp_path / "out")
    assert [e["image_id"] % 1_000_000 for e in train] == [1, 6, 11]
    assert len(read("uavdt/stride5", "test", tmp_path / "out")) == 3


def test_bad_category_names_file_and_line(tmp_path):
    root = write_uavdt(tmp_path / "raw", ["1,1,10,5,8,4,1,1,1", "1,2,10,5,8,4,1,1,4"])
    with pytest.raises(raw.RawDataError, match=r"M0101_gt_whole.txt line 2: category 4"):
        build("uavdt", root, tmp_path / "out")
