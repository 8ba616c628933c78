"""TFDS builder `pixmo_count`: PixMo-Count's parquet rows joined with a local image folder.

manual_dir layout (huggingface.co/datasets/allenai/pixmo-count; the images are URLs, which the
user downloads once):

    <manual_dir>/data/train-*.parquet, validation-*.parquet, test-*.parquet
    <manual_dir>/images/<image_sha256>.<ext>   or   <manual_dir>/images/<URL file name>

Rows carry `image_url, image_sha256, count, points [{x, y}], label`. An image is found by its
sha256 (file stem) first, then by the URL's file name, and must hash to `image_sha256`. Rows
whose image is missing or fails its sha256 are skipped, counted and listed in
`skipped-<split>.tsv` beside the build; more than `max_missing_fraction` of a split skipped
fails the build. `query` is the label, `points` the rows' points as given (none in val/test),
`count` the row's count; `image_id` is the row's index in its split.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse

import pyarrow.parquet as pq

from perception_rl.data.builders import raw

PUBLISHED = "https://huggingface.co/datasets/allenai/pixmo-count"
LAYOUT = "\n\n".join(__doc__.split("\n\n")[1:3])
SPLITS = ("train", "validation", "test")
COLUMNS = ["image_url", "image_sha256", "count", "points", "label"]


class PixmoCount(raw.RawBuilder):
    """PixMo-Count: how many of a label, with points, over web images checked by sha256."""

    name = "pixmo_count"
    TASK = "counting"
    HOMEPAGE = PUBLISHED
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT

    def __init__(self, *, max_missing_fraction: float = 0.2, **kwargs):
        """max_missing_fraction: the build fails above this fraction of skipped rows."""
        super().__init__(**kwargs)
        self.max_missing_fraction = max_missing_fraction

    def _label_names(self, root):
        return []  # The query is each row's label; counting needs no label index.

    def _splits(self, root):
        files = {s: sorted(root.glob(f"data/{s}-*.parquet")) for s in SPLITS}
        files = {s: f for s, f in files.items() if f}
        if not files:
            raw.require(root / "data" / "validation-00000-of-00001.parquet", PUBLISHED)
        images = _image_index(raw.require(root / "images", PUBLISHED))
        for split in files:
            self.skips[split] = raw.Skips(self.max_missing_fraction, "(see --max_missing_fraction)")
        return {split: self._examples(split, paths, images) for split, paths in files.items()}

    def _examples(self, split, paths, images):
        index = 0
        for path in paths:
            for batch in _batches(path):
                for row in batch:
                    example = self._example(split, f"{path.name} row {index}", index, row, images)
                    if example is not None:
                        yield index, example
                    index += 1

    def _example(self, split, where, index, row, images):
        sha256, url = row["image_sha256"], row["image_url"]
        path = images.get(sha256) or images.get(_url_file_name(url))
        if path is None:
            self._skip(split, f"{where} {url}", "image missing")
            return None
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            self._skip(split, f"{where} {path.name}", "sha256 mismatch")
            return None
        image, width, height = raw.rgb_bytes(data, f"{path} ({where})")
        try:
            points = [(float(p["x"]), float(p["y"])) for p in row["points"] or ()]
            count = int(row["count"])
        except (KeyError, TypeError, ValueError) as e:
            raise raw.RawDataError(f"{where}: malformed count or points ({e!r}).") from e
        return raw.example(
            image=image,
            image_id=index,
            image_name=f"images/{path.name}",
            task=self.TASK,
            width=width,
            height=height,
            query=str(row["label"]),
            points=points,
            count=count,
        )


def _batches(path):
    """Rows of a parquet file, a batch at a time (memory bounded whatever the file size)."""
    try:
        parquet = pq.ParquetFile(path)
        missing = set(COLUMNS) - set(parquet.schema_arrow.names)
        if missing:
            raise raw.RawDataError(f"{path}: no column(s) {sorted(missing)}; is it PixMo-Count?")
        for batch in parquet.iter_batches(batch_size=256, columns=COLUMNS):
            yield batch.to_pylist()
    except OSError as e:  # pyarrow's ArrowInvalid is a ValueError; ArrowIOError an OSError.
        raise raw.RawDataError(f"{path}: unreadable parquet ({e}).") from e


def _image_index(folder):
    """File stem and file name → path, for every file in the image folder."""
    index = {}
    for entry in os.scandir(folder):
        if entry.is_file():
            path = folder / entry.name
            index.setdefault(entry.name, path)
            index.setdefault(os.path.splitext(entry.name)[0], path)
    return index


def _url_file_name(url) -> str:
    return os.path.basename(urllib.parse.urlparse(str(url)).path)


Builder = PixmoCount
