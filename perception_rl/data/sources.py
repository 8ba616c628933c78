"""Config → examples: the one factory of random-access example sources, for training, SFT and
evaluation alike.

    source = example_source(config, task, split, num_examples)
    example = source[i]     # dict: image (H, W, 3 uint8), image_id, query, text, boxes, ...

`config.data.source`:
  "synthetic"  generated in-process from `data.seed` with `SyntheticConfig(**data.synthetic)`;
               `num_examples` of them (64 when None).
  "tfds"       a built TFDS dataset `<data.tfds_config or task>` in `data.data_dir`, read without
               TensorFlow (the `[data]` extra).
  "jsonl"      `<data.source_dir>/<split>.jsonl` ground truth with image paths relative to it
               (`JsonlSource`).
Only the first `num_examples` are kept when it is set (PR1 evaluates the first N too).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from perception_rl.data import synthetic
from perception_rl.data.tasks import Task
from perception_rl.errors import ConfigError, DataError, config_value

Example = dict[str, Any]
DEFAULT_SYNTHETIC_EXAMPLES = 64
SOURCES = ("synthetic", "tfds", "jsonl")


def example_source(config, task: Task, split: str, num_examples: int | None = None):
    """Random-access examples of `split` from `config.data` (see the module docstring)."""
    kind = config_value(config, "data.source") or "synthetic"
    if kind == "synthetic":
        return synthetic.SyntheticSource(
            task.name,
            split,
            num_examples or DEFAULT_SYNTHETIC_EXAMPLES,
            seed=config_value(config, "data.seed") or 0,
            config=synthetic.SyntheticConfig(**dict(config_value(config, "data.synthetic") or {})),
        )
    if kind == "tfds":
        from perception_rl.data import pipeline

        data_dir = os.path.expanduser(
            config_value(config, "data.data_dir") or "~/tensorflow_datasets"
        )
        source = pipeline.tfds_source(
            config_value(config, "data.tfds_config") or task.name, split, data_dir
        )
    elif kind == "jsonl":
        directory = config_value(config, "data.source_dir")
        if directory is None:
            raise ConfigError(
                "data.source='jsonl' needs data.source_dir (the directory of <split>.jsonl)."
            )
        source = JsonlSource(pathlib.Path(directory) / f"{split}.jsonl", task)
    else:
        raise ConfigError(f"data.source={kind!r}; expected one of {', '.join(SOURCES)}.")
    return _First(source, num_examples) if num_examples else source


class _First:
    """The first `n` examples of a random-access source (PR1 evaluates the first N too)."""

    def __init__(self, source, n: int):
        self.source, self.n = source, min(int(n), len(source))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.source[index]


class JsonlSource:
    """Ground truth from a JSONL file: one example per line, images read on access.

    Each line: `{"image_id": int, "image": path relative to the file's directory, "query": str,
    "boxes": [[x1, y1, x2, y2], ...], "labels": [int or label name, ...], "points": [[x, y]],
    "text": str, "ignore_boxes": [[...]]}`; all but image_id and image are optional. Every line
    is checked when the source is opened (image headers included), so a malformed file fails
    at once with the file, line and record in the message.
    """

    def __init__(self, path: str | os.PathLike, task: Task):
        self.path = pathlib.Path(path)
        names = {n: i for i, n in enumerate(getattr(task, "label_names", ()))}
        try:
            lines = self.path.read_text().splitlines()
        except OSError as e:
            raise DataError(f"{self.path}: cannot read the ground-truth file ({e}).") from e
        self.examples = [
            self._checked(n, line, names) for n, line in enumerate(lines, 1) if line.strip()
        ]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        example = dict(self.examples[index])
        path = example.pop("image_path")
        line = example.pop("line")
        try:
            with Image.open(path) as image:
                example["image"] = np.asarray(image.convert("RGB"))
        except OSError as e:  # truncated, corrupt or removed since the header check
            raise DataError(
                f"{path} (image of {self.path} line {line}, image_id {example['image_id']}): "
                f"cannot read the image ({e})."
            ) from e
        return example

    def _checked(self, line_number: int, line: str, names: Mapping[str, int]) -> Example:
        where = f"{self.path} line {line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not JSON ({e}).") from e
        text = repr(record)[:200]
        try:
            return {**_parse_example(record, self.path.parent, names), "line": line_number}
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise DataError(f"{where} {text}: {e}") from e


def _parse_example(record: Mapping, root: pathlib.Path, names: Mapping[str, int]) -> Example:
    """One JSONL ground-truth record as an example (without pixels); raises on bad fields."""
    if not isinstance(record, Mapping):
        raise TypeError("a record must be a JSON object")
    image_id = record["image_id"]
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        raise TypeError(f"image_id {image_id!r} is not an integer")
    image_path = root / str(record["image"])
    with Image.open(image_path) as image:  # Reads the header only.
        width, height = image.size
    labels = [_label_index(v, names) for v in record.get("labels", ())]
    example = {
        "image_path": image_path,
        "image_id": image_id,
        "query": str(record.get("query", "")),
        "text": str(record.get("text", "")),
        "labels": np.asarray(labels, np.int64).reshape(-1),
    }
    limits = np.array([width, height, width, height], np.float64)
    for key in ("boxes", "ignore_boxes"):
        boxes = np.asarray(record.get(key, ()), np.float64).reshape(-1, 4)
        bad = ~(
            np.isfinite(boxes).all(1)
            & (boxes >= 0).all(1)
            & (boxes <= limits).all(1)
            & (boxes[:, 0] < boxes[:, 2])
            & (boxes[:, 1] < boxes[:, 3])
        )
        if bad.any():
            raise ValueError(
                f"{key} {boxes[bad][0].tolist()} is empty or outside the {width}x{height} image"
            )
        example[key] = boxes.astype(np.float32)
    points = record.get("points")
    boxes = example["boxes"]
    example["points"] = (
        np.asarray(points, np.float32).reshape(-1, 2)
        if points is not None
        else (boxes[:, :2] + boxes[:, 2:]) / 2
    )
    if len(labels) not in (0, len(boxes)):
        raise ValueError(f"{len(labels)} labels for {len(boxes)} boxes")
    return example


def _label_index(value, names: Mapping[str, int]) -> int:
    """A label given as an index, or as a name of the task's `label_names`."""
    if not isinstance(value, str):
        return int(value)
    if value not in names:
        raise ValueError(f"label {value!r} is not one of the task's {len(names)} label names")
    return names[value]
