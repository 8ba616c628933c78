"""`pixmo_count` builder: parquet rows + an image folder, missing and corrupted images skipped."""

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("tensorflow_datasets")

from builder_fixtures import build, read, write_image

from perception_rl.data.builders import raw


def write_pixmo(root, max_rows=None):
    (root / "data").mkdir(parents=True)
    images = root / "images"
    by_sha = write_image(images / "tmp_a.jpg", 40, 30, seed=1)
    sha_a = hashlib.sha256(by_sha).hexdigest()
    (images / "tmp_a.jpg").rename(images / f"{sha_a}.jpg")  # found by sha256
    by_name = write_image(images / "dog.png", 20, 10, fmt="PNG", seed=2)  # found by URL name
    sha_b = hashlib.sha256(by_name).hexdigest()
    write_image(images / "corrupt.jpg", 20, 10, seed=3)  # hashes to something else
    rows = [
        {
            "image_url": "http://a.example/x/cats.jpg",
            "image_sha256": sha_a,
            "count": 2,
            "points": [{"x": 3.5, "y": 4.0}, {"x": 30.0, "y": 20.25}],
            "label": "cat",
        },
        {
            "image_url": "http://b.example/missing.jpg",
            "image_sha256": "0" * 64,
            "count": 1,
            "points": [{"x": 1.0, "y": 1.0}],
            "label": "bird",
        },
        {
            "image_url": "http://c.example/p/dog.png?size=big",
            "image_sha256": sha_b,
            "count": 3,
            "points": None,
            "label": "dog",
        },
        {
            "image_url": "http://d.example/corrupt.jpg",
            "image_sha256": "f" * 64,
            "count": 4,
            "points": [],
            "label": "car",
        },
    ]
    point = pa.struct([("x", pa.float32()), ("y", pa.float32())])
    schema = pa.schema(
        [
            ("image_url", pa.string()),
            ("image_sha256", pa.string()),
            ("count", pa.int32()),
            ("points", pa.list_(point)),
            ("label", pa.string()),
        ]
    )
    table = pa.Table.from_pylist(rows[:max_rows], schema=schema)
    pq.write_table(table, root / "data" / "validation-00000-of-00001.parquet")
    return root


def test_rows_join_images_by_sha256_or_name_and_skips_are_listed(tmp_path):
    builder = build(
        "pixmo_count", write_pixmo(tmp_path / "raw"), tmp_path / "out", max_missing_fraction=0.5
    )
    cats, dogs = read("pixmo_count", "validation", tmp_path / "out")
    assert (cats["image_id"], cats["query"], cats["count"]) == (0, "cat", 2)
    np.testing.assert_array_equal(cats["points"], [[3.5, 4.0], [30.0, 20.25]])
    assert (cats["width"], cats["height"], cats["task"]) == (40, 30, "counting")
    assert (dogs["image_id"], dogs["query"], dogs["count"]) == (2, "dog", 3)
    assert dogs["points"].shape == (0, 2) and dogs["image_name"] == "images/dog.png"
    assert dogs["image"].shape == (10, 20, 3)
    assert builder.info.metadata["skipped"] == {
        "validation": {"image missing": 1, "sha256 mismatch": 1}
    }
    listing = (tmp_path / "out" / "pixmo_count" / "1.0.0" / "skipped-validation.tsv").read_text()
    assert listing.splitlines() == [
        "record\treason",
        "validation-00000-of-00001.parquet row 1 http://b.example/missing.jpg\timage missing",
        "validation-00000-of-00001.parquet row 3 corrupt.jpg\tsha256 mismatch",
    ]


def test_too_many_missing_images_fail_the_build(tmp_path):
    with pytest.raises(raw.RawDataError, match=r"2 of 4 examples skipped.*0.25"):
        build(
            "pixmo_count",
            write_pixmo(tmp_path / "raw"),
            tmp_path / "out",
            max_missing_fraction=0.25,
        )
    assert not (tmp_path / "out" / "pixmo_count" / "1.0.0").exists()


def test_counting_metric_reads_the_rows_count():
    from perception_rl.tasks import counting

    assert counting.count({"count": 3, "points": np.zeros((0, 2))}) == 3
    assert counting.count({"points": np.zeros((2, 2))}) == 2
