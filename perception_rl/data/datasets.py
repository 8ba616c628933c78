"""The real datasets: name → TFDS builder, and the random-access source training and eval read.

    from perception_rl.data import datasets
    examples = datasets.source("crowdhuman", "validation", data_dir="~/tensorflow_datasets")
    examples[0]   # {"image": uint8 [H, W, 3], "image_id": int, "query": str, "boxes": ...}
    examples.label_names   # from the built dataset's metadata

`name` is a builder (its default config) or `builder/config`, or a config name alone where it
is unambiguous (`refcoco_unc`, `crowdhuman_visible`). Build first with
`python -m perception_rl.data.build NAME[/CONFIG] --manual_dir=RAW --data_dir=OUT`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence

import numpy as np

# builder name → module under perception_rl.data.builders (imported on use).
BUILDERS = {
    "refcoco": "refcoco",
    "pr1_grounding": "pr1_grounding",
    "pixmo_count": "pixmo_count",
    "fox_page_ocr": "fox_page_ocr",
    "coco_detection": "coco_detection",
    "crowdhuman": "crowdhuman",
    "citypersons": "citypersons",
    "wider_pedestrian": "wider_pedestrian",
    "uavdt": "uavdt",
}
_TEXT_FIELDS = ("image_name", "task", "query", "text")


def builder_class(name: str):
    """The builder class registered as `name` (importing its module registers it with TFDS)."""
    if name not in BUILDERS:
        raise KeyError(f"Unknown dataset {name!r}; known: {sorted(BUILDERS)}.")
    try:
        module = importlib.import_module(f"perception_rl.data.builders.{BUILDERS[name]}")
    except ImportError as e:
        raise ImportError(
            f"The {name} builder needs {e.name}: pip install 'perception_rl[data]'."
        ) from e
    return module.Builder


def resolve(name: str) -> tuple[str, str | None]:
    """`(builder, config)` of `builder`, `builder/config` or an unambiguous config name."""
    builder, _, config = name.partition("/")
    if builder in BUILDERS:
        return builder, config or None
    owners = [b for b in BUILDERS if name in _config_names_if_importable(b)]
    if len(owners) != 1:
        raise KeyError(
            f"{name!r} names no dataset (or several); use one of {sorted(BUILDERS)}, "
            "optionally as builder/config."
        )
    return owners[0], name


def config_names(builder: str) -> list[str]:
    return [c.name for c in builder_class(builder).BUILDER_CONFIGS]


def _config_names_if_importable(builder: str) -> list[str]:
    """Config names, or none where the builder's dependencies are missing (so that names of
    `synthetic_perception` configs still resolve with the older `[data]` extra)."""
    try:
        return config_names(builder)
    except ImportError:
        return []


def is_dataset(name: str) -> bool:
    try:
        resolve(name)
    except KeyError:
        return False
    return True


def builder(name: str, *, data_dir: str | os.PathLike, **kwargs):
    """The TFDS builder of `name` (see `resolve`) in `data_dir`."""
    builder_name, config = resolve(name)
    cls = builder_class(builder_name)
    return cls(data_dir=os.path.expanduser(os.fspath(data_dir)), config=config, **kwargs)


class Source(Sequence):
    """A built split as a random-access sequence of example dicts (text as str, ids as int).

    Attributes:
      label_names: names of `labels`' indices, from the built dataset's metadata.
      info: the TFDS DatasetInfo.
    """

    def __init__(self, records, info):
        self.records, self.info = records, info
        self.label_names = tuple(info.metadata.get("label_names", ()))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return to_example(self.records[index])

    def __getitems__(self, indices):  # grain reads batches of indices through this.
        return [to_example(r) for r in self.records.__getitems__(indices)]

    def __repr__(self) -> str:
        return f"Source({self.info.full_name}, {len(self)} examples)"


def source(name: str, split: str, *, data_dir: str | os.PathLike) -> Source:
    """The random-access examples of a built dataset's split, read without TensorFlow.

    Raises:
      FileNotFoundError: the dataset is not built in `data_dir` (says how to build it), or the
        split does not exist (names the splits that do).
    """
    built = builder(name, data_dir=data_dir)
    if not built.is_prepared():
        raise FileNotFoundError(
            f"{name} is not built in {built.data_dir}; run `python -m perception_rl.data.build "
            f"{name} --manual_dir=RAW --data_dir={data_dir}` first."
        )
    if split not in built.info.splits:
        raise FileNotFoundError(f"{name} has no split {split!r}; built: {list(built.info.splits)}.")
    return Source(built.as_data_source(split), built.info)


def label_names(name: str, *, data_dir: str | os.PathLike) -> tuple[str, ...]:
    """The label names in a built dataset's metadata."""
    return tuple(builder(name, data_dir=data_dir).info.metadata.get("label_names", ()))


def to_example(record: Mapping) -> dict:
    """A decoded TFDS record with text as `str` and numbers as Python ints."""
    example = dict(record)
    for key in _TEXT_FIELDS:
        if isinstance(example.get(key), bytes):
            example[key] = example[key].decode("utf-8")
    for key in ("image_id", "width", "height", "count"):
        example[key] = int(example[key])
    for key in ("boxes", "ignore_boxes", "points", "area"):
        example[key] = np.asarray(example[key], np.float32)
    return example
