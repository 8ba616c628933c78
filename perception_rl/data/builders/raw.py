"""What every real-dataset builder shares: the example schema, the base class, checks, skips.

Each builder reads the files a user downloaded from `manual_dir` and writes array_record with
no TensorFlow installed (data_eval.md §3.3–3.4): images are handed to TFDS as encoded bytes,
re-encoded as PNG only when they are not RGB already (TFDS' PIL decoder does not convert).

The schema is the one the tasks read (`perception_rl.tasks`), plus the image size:

  image         uint8 [H, W, 3]
  image_id      int64, unique within a split (the example's id: a sentence id for RefCOCO)
  image_name    the source file the pixels come from (relative to manual_dir)
  task          the task that reads the example ("grounding", "crowd", ...)
  query, text   the prompt's object (expression, label, category) and the OCR text
  width, height the image size in pixels
  boxes         float32 [N, 4] [x1, y1, x2, y2] original pixels, stored as the dataset gives
                them (no clipping: who clips follows the evaluation protocol)
  labels        int64 [N], indices into the builder's metadata `label_names`
  points        float32 [P, 2] (x, y) pixels
  ignore_boxes  float32 [K, 4] [x1, y1, x2, y2] regions evaluation ignores
  iscrowd       int64 [N] (COCO's flag; 0 elsewhere)
  area          float32 [N] (COCO's segmentation area; box area elsewhere)
  count         int64, the number of instances (PixMo-Count's `count`; len(boxes) elsewhere)

Builders record examples they skip (with the reason) in `info.metadata["skipped"]` and in
`skipped-<split>.tsv` beside the records; TFDS builds into a temporary directory renamed only
on success, so an interrupted build never reads as complete.
"""

from __future__ import annotations

import collections
import io
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from perception_rl.data.builders import tfds_spill

Example = dict
# A coordinate further than this many image sizes outside the image is a corrupt record.
SANE_RANGE = 4.0
# With `disable_shuffling`, TFDS sorts records by key and, past 1 GB, spills them to 1,000
# on-disk buckets by key range (key · 1000 / 2^128), each sorted in memory when written out.
# Keys `position << KEY_SHIFT` keep the raw files' order and put ~1,049 consecutive examples
# in each bucket, so memory stays bounded; small keys would all land in one bucket.
KEY_SHIFT = 108
MAX_EXAMPLES_PER_SPLIT = 1 << (128 - KEY_SHIFT)  # 1,048,576


class RawDataError(ValueError):
    """A raw file is malformed; the message names the file and the record."""


class MissingFileError(FileNotFoundError):
    """A raw file is missing; the message names it and where the dataset is published."""


def features() -> tfds.features.FeaturesDict:
    """The example schema of every real-dataset builder (see the module docstring)."""
    boxes = tfds.features.Tensor(shape=(None, 4), dtype=np.float32)
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image_id": np.int64,
            "image_name": tfds.features.Text(),
            "task": tfds.features.Text(),
            "query": tfds.features.Text(),
            "text": tfds.features.Text(),
            "width": np.int64,
            "height": np.int64,
            "boxes": boxes,
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            "points": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
            "ignore_boxes": boxes,
            "iscrowd": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            "area": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "count": np.int64,
        }
    )


class RawBuilder(tfds.core.GeneratorBasedBuilder):
    """Base of the builders that read a user's raw files from `manual_dir`.

    Subclasses set `TASK`, `HOMEPAGE`, `MANUAL_DOWNLOAD_INSTRUCTIONS` and implement
    `_label_names(root)` and `_splits(root)` (split name → iterator of `(key, example)`).
    """

    TASK = ""
    HOMEPAGE = ""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Initial release."}

    def __init__(
        self, *, on_bad_box: str = "fail", file_format: str | None = "array_record", **kwargs
    ):
        """Args: on_bad_box: "fail" (default) stops the build at a box with a negative size or
        far outside the image, naming it; "skip" drops that annotation (an example whose only
        box it is) and counts it in the split's skips."""
        if on_bad_box not in ("fail", "skip"):
            raise ValueError(f"on_bad_box={on_bad_box!r}; expected 'fail' or 'skip'.")
        super().__init__(file_format=file_format, **kwargs)
        tfds_spill.install()  # Splits above 1 GB spill to disk, TF or not.
        self.skips: dict[str, Skips] = {}
        self.on_bad_box = on_bad_box
        self._split = ""  # The split being generated (TFDS generates splits one at a time).

    def _info(self) -> tfds.core.DatasetInfo:
        # A module builder states its info directly (dataset_info_from_configs needs a package).
        return tfds.core.DatasetInfo(
            builder=self,
            description=(type(self).__doc__ or "").split("\n")[0],
            features=features(),
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(),
            # Records keep the raw files' order; pipelines shuffle anyway.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        root = epath.Path(dl_manager.manual_dir)
        self.info.metadata["label_names"] = list(self._label_names(root))
        self.info.metadata["skipped"] = {}
        return {
            split: self._counted(split, examples) for split, examples in self._splits(root).items()
        }

    def _generate_examples(self, **kwargs):  # Splits come from `_splits` instead.
        raise NotImplementedError

    def _label_names(self, root: epath.Path) -> Iterable[str]:
        raise NotImplementedError

    def _splits(self, root: epath.Path) -> Mapping[str, Iterator[tuple[str, Example]]]:
        raise NotImplementedError

    def _counted(self, split: str, examples: Iterator[tuple[str, Example]]):
        """Yields the examples, then records the split's skips (metadata + a TSV listing)."""
        skips = self.skips.setdefault(split, Skips())
        self._split = split
        for position, (_, example) in enumerate(examples):
            if position >= MAX_EXAMPLES_PER_SPLIT:
                raise RawDataError(f"Split {split}: more than {MAX_EXAMPLES_PER_SPLIT} examples.")
            skips.kept += 1
            yield position << KEY_SHIFT, example
        skips.check(split)
        self.info.metadata["skipped"][split] = dict(skips.counts)
        # self.data_dir is the temporary build directory here, renamed once complete.
        with (epath.Path(self.data_dir) / f"skipped-{split}.tsv").open("w") as listing:
            listing.write("record\treason\n")
            listing.writelines(f"{record}\t{reason}\n" for record, reason in skips.listing)

    def _skip(self, split: str, record: str, reason: str) -> None:
        self.skips.setdefault(split, Skips()).add(record, reason)

    def _box(self, box: list[float], width: int, height: int, where: str) -> list[float] | None:
        """`check_box`, or None (the box skipped and counted) under `on_bad_box="skip"`."""
        try:
            return check_box(box, width, height, where)
        except RawDataError as e:
            if self.on_bad_box == "fail":
                raise RawDataError(f"{e} (--option on_bad_box=skip drops such boxes)") from None
            self._skip(self._split, str(e), "bad box dropped")
            return None


class Skips:
    """Examples (or annotations) left out of a split, with the reason for each."""

    def __init__(self, max_fraction: float | None = None, reason_limited: str = ""):
        self.kept = 0
        self.counts: collections.Counter = collections.Counter()
        self.listing: list[tuple[str, str]] = []
        self.max_fraction, self.reason_limited = max_fraction, reason_limited

    def add(self, record: str, reason: str) -> None:
        self.counts[reason] += 1
        self.listing.append((record, reason))

    def check(self, split: str) -> None:
        """Fails the build when more than `max_fraction` of the split was skipped."""
        if self.max_fraction is None:
            return
        skipped = sum(self.counts.values())
        total = skipped + self.kept
        if total and skipped / total > self.max_fraction:
            raise RawDataError(
                f"Split {split}: {skipped} of {total} examples skipped ({dict(self.counts)}), "
                f"more than the allowed fraction {self.max_fraction} {self.reason_limited}."
            )


# ---------------------------------------------------------------------------- files and images
def require(path: epath.Path, published_at: str) -> epath.Path:
    """`path`, or an error naming it and where the dataset is published."""
    if not path.exists():
        raise MissingFileError(
            f"Missing {path}: expected in manual_dir; get it from {published_at}."
        )
    return path


def image_bytes(path: epath.Path, published_at: str) -> tuple[bytes, int, int]:
    """The image's encoded bytes (RGB JPEG/PNG kept as is), width and height.

    Raises:
      MissingFileError: the file is missing. RawDataError: it does not decode.
    """
    data = require(path, published_at).read_bytes()
    return rgb_bytes(data, str(path))


def rgb_bytes(data: bytes, name: str) -> tuple[bytes, int, int]:
    """Encoded RGB bytes of an encoded image (others re-encoded as PNG), width and height."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if image.mode == "RGB" and image.format in ("JPEG", "PNG"):
                return data, width, height
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
            return buffer.getvalue(), width, height
    except OSError as e:  # PIL's UnidentifiedImageError is an OSError.
        raise RawDataError(f"{name}: not a readable image ({e}).") from e


# ------------------------------------------------------------------------------------ boxes
def xywh_to_xyxy(box, where: str) -> list[float]:
    """A `[x, y, w, h]` box as `[x1, y1, x2, y2]`; a wrong length or non-number names `where`."""
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError) as e:
        raise RawDataError(f"{where}: box {box!r} is not [x, y, w, h] ({e}).") from e
    return [x, y, x + w, y + h]


def check_box(box: list[float], width: int, height: int, where: str) -> list[float]:
    """Returns `box` unchanged ([x1, y1, x2, y2]); fails on a negative size or a coordinate
    that is not finite or lies more than `SANE_RANGE` image sizes outside the image.

    Boxes past the border are kept as given: the evaluation protocol decides on clipping.
    """
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        raise RawDataError(f"{where}: box {box} is not finite.")
    if x2 < x1 or y2 < y1:
        raise RawDataError(f"{where}: box {box} has a negative width or height.")
    xs_ok = all(-SANE_RANGE * width <= v <= (1 + SANE_RANGE) * width for v in (x1, x2))
    ys_ok = all(-SANE_RANGE * height <= v <= (1 + SANE_RANGE) * height for v in (y1, y2))
    if not (xs_ok and ys_ok):
        raise RawDataError(f"{where}: box {box} is far outside the {width}x{height} image.")
    return box


def example(
    *,
    image: bytes,
    image_id: int,
    image_name: str,
    task: str,
    width: int,
    height: int,
    query: str = "",
    text: str = "",
    boxes=(),
    labels=(),
    points=(),
    ignore_boxes=(),
    iscrowd=None,
    area=None,
    count=None,
) -> Example:
    """One example in the schema; `iscrowd` defaults to 0, `area` to the boxes' areas and
    `count` to the number of boxes (of points when there are none)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    points = np.asarray(points, np.float32).reshape(-1, 2)
    if count is None:
        count = len(boxes) or len(points)
    if area is None:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return {
        "image": image,
        "image_id": int(image_id),
        "image_name": image_name,
        "task": task,
        "query": query,
        "text": text,
        "width": int(width),
        "height": int(height),
        "boxes": boxes,
        "labels": np.asarray(labels, np.int64).reshape(-1),
        "points": points,
        "ignore_boxes": np.asarray(ignore_boxes, np.float32).reshape(-1, 4),
        "iscrowd": np.zeros(len(boxes), np.int64)
        if iscrowd is None
        else np.asarray(iscrowd, np.int64).reshape(-1),
        "area": np.asarray(area, np.float32).reshape(-1),
        "count": int(count),
    }
