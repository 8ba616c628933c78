"""`refcoco` builder: refer-format fixture (pickle + instances.json + train2014 JPEGs)."""

import json
import os
import pickle

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from builder_fixtures import build, read, write_image

from perception_rl.data.builders import raw, refcoco, safe_pickle

SIZES = {1: (64, 48), 2: (80, 40)}  # image_id -> (width, height)


def _sentence(sent_id, sent):
    return {"sent_id": sent_id, "sent": sent, "raw": sent.capitalize(), "tokens": sent.split()}


def _refs():
    return [
        # Two sentences for one ref: two examples.
        {
            "ref_id": 0,
            "ann_id": 101,
            "image_id": 1,
            "category_id": 1,
            "split": "train",
            "sent_ids": [10, 11],
            "file_name": "stale.jpg",
            "sentences": [_sentence(10, "man on left"), _sentence(11, "guy in red")],
        },
        {
            "ref_id": 1,
            "ann_id": 102,
            "image_id": 2,
            "category_id": 3,
            "split": "testA",
            "sent_ids": [12],
            "sentences": [_sentence(12, "café table")],
        },
        {
            "ref_id": 2,
            "ann_id": 103,
            "image_id": 1,
            "category_id": 3,
            "split": "val",
            "sent_ids": [13],
            "sentences": [_sentence(13, "right chair")],
        },
    ]


def _instances():
    return {
        "images": [
            {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": w, "height": h}
            for i, (w, h) in SIZES.items()
        ],
        "annotations": [
            {
                "id": 101,
                "image_id": 1,
                "category_id": 1,
                "bbox": [2.5, 3.0, 20.0, 30.25],
                "area": 400.0,
                "iscrowd": 0,
                "segmentation": [[0, 0, 1, 1, 2, 2]],
            },
            # Past the right border (x2 = 85 > 80): stored as given.
            {
                "id": 102,
                "image_id": 2,
                "category_id": 3,
                "bbox": [60.0, 1.0, 25.0, 10.0],
                "area": 200.0,
                "iscrowd": 0,
                "segmentation": [],
            },
            {
                "id": 103,
                "image_id": 1,
                "category_id": 3,
                "bbox": [40, 10, 8, 8],
                "area": 50.5,
                "iscrowd": 0,
            },
            {
                "id": 104,
                "image_id": 2,
                "category_id": 1,
                "bbox": [0, 0, 1, 1],
                "area": 1,
                "iscrowd": 0,
            },
        ],
        # Category ids with a gap (2 is unused): label indices are 0 and 1.
        "categories": [{"id": 3, "name": "chair"}, {"id": 1, "name": "person"}],
    }


def write_refer(root, dataset="refcoco", split_by="unc", refs=None, protocol=2):
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"refs({split_by}).p", "wb") as f:
        pickle.dump(_refs() if refs is None else refs, f, protocol=protocol)
    (folder / "instances.json").write_text(json.dumps(_instances()))
    for i, (w, h) in SIZES.items():
        write_image(root / "train2014" / f"COCO_train2014_{i:012d}.jpg", w, h, seed=i)
    return root


def test_builds_one_example_per_sentence_in_the_datasets_splits(tmp_path):
    raw_dir = write_refer(tmp_path / "raw")
    builder = build("refcoco/refcoco_unc", raw_dir, tmp_path / "out")
    assert sorted(builder.info.splits) == ["testA", "train", "val"]
    assert builder.info.metadata["label_names"] == ["person", "chair"]

    train = read("refcoco_unc", "train", tmp_path / "out")
    assert [e["image_id"] for e in train] == [10, 11]
    assert [e["query"] for e in train] == ["man on left", "guy in red"]
    for e in train:  # [2.5, 3, 20, 30.25] xywh -> xyxy
        np.testing.assert_array_equal(e["boxes"], [[2.5, 3.0, 22.5, 33.25]])
        np.testing.assert_array_equal(e["labels"], [0])  # person
        assert (e["width"], e["height"], e["image"].shape) == (64, 48, (48, 64, 3))
        assert e["image_name"] == "train2014/COCO_train2014_000000000001.jpg"
        assert e["task"] == "grounding"
        np.testing.assert_array_equal(e["area"], [400.0])

    (test_a,) = read("refcoco_unc", "testA", tmp_path / "out")
    assert test_a["query"] == "café table"
    np.testing.assert_array_equal(test_a["boxes"], [[60.0, 1.0, 85.0, 11.0]])  # not clipped
    np.testing.assert_array_equal(test_a["labels"], [1])  # chair
    (val,) = read("refcoco_unc", "val", tmp_path / "out")
    np.testing.assert_array_equal(val["boxes"], [[40.0, 10.0, 48.0, 18.0]])


def test_other_configs_read_their_own_folder(tmp_path):
    raw_dir = write_refer(tmp_path / "raw", "refcocog", "umd")
    build("refcoco/refcocog_umd", raw_dir, tmp_path / "out")
    assert len(read("refcocog_umd", "train", tmp_path / "out")) == 2
    with pytest.raises(raw.MissingFileError, match=r"refcoco\+/refs\(unc\)\.p.*lichengunc/refer"):
        build("refcoco/refcocoplus_unc", raw_dir, tmp_path / "out")


class _RunsCode:
    """Unpickles as a call of os.system: what a hostile refs file would do."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    hostile = [{"ref_id": 0, "payload": _RunsCode(f"touch {marker}")}]
    raw_dir = write_refer(tmp_path / "raw", refs=hostile)
    data = (raw_dir / "refcoco" / "refs(unc).p").read_bytes()
    with pytest.raises(safe_pickle.UnsafePickleError, match=r"Refused to load global .*system"):
        safe_pickle.loads(data, name="refs(unc).p")
    with pytest.raises(safe_pickle.UnsafePickleError, match=r"refs\(unc\)\.p.*Refused"):
        build("refcoco/refcoco_unc", raw_dir, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out" / "refcoco" / "refcoco_unc" / "1.0.0").exists()
    pickle.loads(data)  # The fixture is genuinely hostile: a plain unpickler runs it.
    assert marker.exists()


def test_plain_pickles_of_every_protocol_load():
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert safe_pickle.loads(pickle.dumps(_refs(), protocol=protocol)) == _refs()


def test_malformed_ref_and_unknown_annotation_name_the_record(tmp_path):
    refs = _refs()
    del refs[1]["sentences"][0]["sent_id"]
    raw_dir = write_refer(tmp_path / "raw", refs=refs)
    with pytest.raises(raw.RawDataError, match=r"refs\(unc\)\.p: ref #1 \(ref_id 1\)"):
        build("refcoco/refcoco_unc", raw_dir, tmp_path / "out")
    refs = _refs()
    refs[2]["ann_id"] = 999
    raw_dir = write_refer(tmp_path / "raw2", refs=refs)
    with pytest.raises(raw.RawDataError, match=r"ref_id 2: ann_id 999"):
        build("refcoco/refcoco_unc", raw_dir, tmp_path / "out2")


def test_missing_image_names_file_and_where_to_get_it(tmp_path):
    raw_dir = write_refer(tmp_path / "raw")
    os.remove(raw_dir / "train2014" / "COCO_train2014_000000000002.jpg")
    with pytest.raises(raw.MissingFileError, match=r"COCO_train2014_000000000002.jpg.*cocodataset"):
        build("refcoco/refcoco_unc", raw_dir, tmp_path / "out")
    assert not (tmp_path / "out" / "refcoco" / "refcoco_unc" / "1.0.0").exists()


def test_python2_pickles_load_with_utf8_text():
    # What Python 2's pickle.dumps([{"sent": "café", "sent_id": 7}], 2) writes: the str is
    # UTF-8 bytes (SHORT_BINSTRING), the keys plain ASCII.
    data = b"\x80\x02]q\x00}q\x01(U\x04sentq\x02U\x05caf\xc3\xa9q\x03U\x07sent_idq\x04K\x07ua."
    (ref,) = safe_pickle.loads(data)
    assert ref["sent_id"] == 7
    assert refcoco._text(ref["sent"]) == "café"
