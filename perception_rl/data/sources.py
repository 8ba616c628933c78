"""Config → task and examples: the one factory of tasks and random-access example sources, for
training, SFT and evaluation alike.

    task = task_from_config(config)
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

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from perception_rl.data import synthetic
from perception_rl.errors import ConfigError, DataError, config_value
from perception_rl.tasks import TASKS, Task, get_task

Example = dict[str, Any]
DEFAULT_SYNTHETIC_EXAMPLES = 64
SOURCES = ("synthetic", "tfds", "jsonl")


def task_from_config(config) -> Task:
    """The task `config.task` with `config.task_options` overriding its fields.

    Label names come from the data when the config does not set them: the built dataset's
    metadata for `data.source='tfds'`, `synthetic.LABELS` for synthetic scenes. A JSONL source
    carries no names, so a task that needs them must get `task_options.label_names`.
    """
    name = config_value(config, "task")
    options = dict(config_value(config, "task_options") or {})
    if name not in TASKS:
        raise ConfigError(f"task={name!r}; registered: {', '.join(sorted(TASKS))}.")
    has_labels = "label_names" in {f.name for f in dataclasses.fields(TASKS[name])}
    if has_labels and not options.setdefault("label_names", data_label_names(config, name)):
        raise ConfigError(
            f"task_options.label_names: task {name!r} needs the category names its labels "
            f"index, and data.source={config_value(config, 'data.source')!r} has none; "
            'set them (e.g. --config.task_options.label_names=\'("cat", "dog")\').'
        )
    try:
        return get_task(name, **options)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"task_options: {e.args[0] if e.args else e}") from None


def data_label_names(config, task_name: str) -> tuple[str, ...]:
    """The names `labels` index in `config.data`'s examples (see `task_from_config`)."""
    kind = config_value(config, "data.source") or "synthetic"
    if kind == "tfds":
        from perception_rl.data import datasets

        dataset = config_value(config, "data.tfds_config") or task_name
        if datasets.is_dataset(dataset):
            data_dir = config_value(config, "data.data_dir") or "~/tensorflow_datasets"
            return datasets.label_names(dataset, data_dir=os.path.expanduser(data_dir))
        return synthetic.LABELS  # a built synthetic_perception config
    if kind == "synthetic":
        return synthetic.LABELS
    return ()


def check_source(source, task: Task, where: str = "data") -> None:
    """Fails before any work when the examples belong to another task (e.g. `task=ocr` on a
    counting dataset: training would run to the end on reward 0)."""
    if not len(source):
        raise DataError(f"{where}: the split has no examples.")
    first = source[0]
    found = first.get("task") if isinstance(first, Mapping) else None
    if found not in (None, "", task.name):
        raise DataError(
            f"{where}: the split holds {found!r} examples but config.task is {task.name!r}; "
            "point data at a matching dataset or change config.task."
        )


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
