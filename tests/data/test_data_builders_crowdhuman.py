"""`crowdhuman` builder: an odgt fixture with mask tags, ignore flags and border-crossing boxes."""

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from builder_fixtures import build, read, write_image

from perception_rl.data.builders import raw

VAL = [
    {
        "ID": "273271,c9db000d5146c15",
        "gtboxes": [
            # A person whose full box crosses the left and bottom borders of the 60x40 image.
            {
                "tag": "person",
                "fbox": [-5, 10, 20, 40],
                "vbox": [0, 10, 15, 30],
                "hbox": [2, 10, 5, 5],
                "extra": {"box_id": 0, "occ": 1, "ignore": 0},
                "head_attr": {"ignore": 0, "occ": 0, "unsure": 0},
            },
            # A crowd region: tag "mask" -> ignore.
            {
                "tag": "mask",
                "fbox": [30, 0, 10, 10],
                "vbox": [30, 0, 10, 10],
                "hbox": [30, 0, 1, 1],
                "extra": {"box_id": 1, "occ": 0, "ignore": 1},
            },
            # A person flagged ignore.
            {
                "tag": "person",
                "fbox": [40, 5, 8, 20],
                "vbox": [41, 6, 6, 18],
                "extra": {"box_id": 2, "ignore": 1},
            },
            # No extra.ignore at all: a regular person.
            {
                "tag": "person",
                "fbox": [50.5, 2, 9, 30],
                "vbox": [51, 3, 8, 20],
                "extra": {"box_id": 3},
            },
        ],
    },
    {"ID": "284193,faa9000f2678b5e", "gtboxes": []},
]


def write_crowdhuman(root, val=VAL, train=None):
    root.mkdir(parents=True, exist_ok=True)
    for split, records in (("val", val), ("train", train)):
        if records is None:
            continue
        with open(root / f"annotation_{split}.odgt", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        for r in records:
            write_image(root / "Images" / f"{r['ID']}.jpg", 60, 40)
    return root


def test_full_boxes_ignore_regions_and_border_boxes_as_given(tmp_path):
    builder = build("crowdhuman", write_crowdhuman(tmp_path / "raw"), tmp_path / "out")
    assert list(builder.info.splits) == ["validation"]
    assert builder.info.metadata["label_names"] == ["person"]
    first, second = read("crowdhuman", "validation", tmp_path / "out")
    assert (first["image_id"], first["width"], first["height"]) == (0, 60, 40)
    assert first["image_name"] == "Images/273271,c9db000d5146c15.jpg"
    assert (first["task"], first["query"]) == ("crowd", "person")
    # xywh -> xyxy by hand; the first box keeps x1 = -5 and y2 = 50 (past the 60x40 image).
    np.testing.assert_array_equal(first["boxes"], [[-5, 10, 15, 50], [50.5, 2, 59.5, 32]])
    np.testing.assert_array_equal(first["labels"], [0, 0])
    np.testing.assert_array_equal(first["ignore_boxes"], [[30, 0, 40, 10], [40, 5, 48, 25]])
    assert first["image"].shape == (40, 60, 3)
    assert second["boxes"].shape == (0, 4) and second["ignore_boxes"].shape == (0, 4)


def test_visible_config_reads_vbox(tmp_path):
    build("crowdhuman/visible", write_crowdhuman(tmp_path / "raw", train=VAL[:1]), tmp_path / "o")
    (train,) = read("crowdhuman/visible", "train", tmp_path / "o")
    np.testing.assert_array_equal(train["boxes"], [[0, 10, 15, 40], [51, 3, 59, 23]])
    np.testing.assert_array_equal(train["ignore_boxes"], [[30, 0, 40, 10], [41, 6, 47, 24]])


def test_a_malformed_line_names_file_and_line(tmp_path):
    root = write_crowdhuman(tmp_path / "raw")
    with open(root / "annotation_val.odgt", "a") as f:
        f.write('{"ID": "x", "gtboxes": [\n')
    with pytest.raises(raw.RawDataError, match=r"annotation_val.odgt line 3"):
        build("crowdhuman", root, tmp_path / "out")


def test_a_negative_width_names_the_example(tmp_path):
    bad = [{"ID": "a", "gtboxes": [{"tag": "person", "fbox": [5, 5, -3, 4], "vbox": [0, 0, 1, 1]}]}]
    root = write_crowdhuman(tmp_path / "raw", val=bad)
    with pytest.raises(raw.RawDataError, match=r"line 1 \(ID a\) gtboxes\[0\].*negative width"):
        build("crowdhuman", root, tmp_path / "out")


def test_missing_annotations_name_the_file_and_the_site(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "readme.txt").write_text("not the dataset")
    with pytest.raises(raw.MissingFileError, match=r"annotation_val.odgt.*crowdhuman.org"):
        build("crowdhuman", tmp_path / "raw", tmp_path / "out")


def test_an_interrupted_build_leaves_nothing_that_reads_as_complete(tmp_path):
    root = write_crowdhuman(tmp_path / "raw")
    (root / "Images" / "284193,faa9000f2678b5e.jpg").write_bytes(b"truncated")
    with pytest.raises(raw.RawDataError, match=r"284193,faa9000f2678b5e.jpg: not a readable"):
        build("crowdhuman", root, tmp_path / "out")
    from perception_rl.data import datasets

    with pytest.raises(FileNotFoundError, match="not built"):
        datasets.source("crowdhuman", "validation", data_dir=tmp_path / "out")
    assert not list((tmp_path / "out").glob("crowdhuman/full/1.0.0"))


def test_on_bad_box_skip_drops_the_box_and_counts_it(tmp_path):
    bad = [
        {
            "ID": "a",
            "gtboxes": [
                {"tag": "person", "fbox": [5, 5, -3, 4], "vbox": [0, 0, 1, 1]},
                {"tag": "person", "fbox": [1, 2, 3, 4], "vbox": [0, 0, 1, 1]},
            ],
        },
    ]
    root = write_crowdhuman(tmp_path / "raw", val=bad)
    with pytest.raises(raw.RawDataError, match=r"on_bad_box=skip"):
        build("crowdhuman", root, tmp_path / "out")
    builder = build("crowdhuman", root, tmp_path / "out", on_bad_box="skip")
    (example,) = read("crowdhuman", "validation", tmp_path / "out")
    np.testing.assert_array_equal(example["boxes"], [[1, 2, 4, 6]])
    assert builder.info.metadata["skipped"] == {"validation": {"bad box dropped": 1}}
    listing = tmp_path / "out" / "crowdhuman" / "full" / "1.0.0" / "skipped-validation.tsv"
    assert "gtboxes[0]: box [5.0, 5.0, 2.0, 9.0] has a negative width" in listing.read_text()


def test_records_keep_the_file_order_when_tfds_spills_to_disk(tmp_path, monkeypatch):
    """Past TFDS' in-memory buffer, records go through its on-disk buckets: still in order."""
    from tensorflow_datasets.core import shuffle

    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1000)  # bytes: spill at once
    records = [{"ID": f"z{25 - n:02d}", "gtboxes": []} for n in range(25)]  # IDs descending
    build("crowdhuman", write_crowdhuman(tmp_path / "raw", val=records), tmp_path / "out")
    examples = read("crowdhuman", "validation", tmp_path / "out")
    assert [e["image_id"] for e in examples] == list(range(25))
    assert [e["image_name"] for e in examples] == [f"Images/z{25 - n:02d}.jpg" for n in range(25)]
