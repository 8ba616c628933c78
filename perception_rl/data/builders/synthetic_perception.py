"""TFDS builder `synthetic_perception`: the procedural data of `synthetic.py` as array_record.

Builds and reads with no TensorFlow installed (data_eval.md §3.3–3.4): the records are written
as array_record (the default TFRecord writer imports TF) and images are handed to TFDS as PNG
bytes (encoding a numpy image would call `tf.image`). Read back with `tfds.data_source` or
`builder.as_data_source(split)`, and convert records with `to_example`.

Two sources:
  * default: examples generated in-process from `(task, seed, split, index)`;
  * `source_dir`: a raw directory written by `write_source` (or by hand) holding
    `<split>.jsonl` annotations and `<split>/<image_id>.png` images, the layout a real
    dataset arrives in. Every example is validated, so a corrupt source (unreadable image, box
    outside the image) fails the build with an error naming the example.

Build from the command line:

    python -m perception_rl.data.builders.synthetic_perception --task=counting \\
        --data_dir=~/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
from collections.abc import Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from perception_rl.data import synthetic

NAME = "synthetic_perception"
SPLIT_SIZES = {"train": 4096, "validation": 512, "test": 512}


@dataclasses.dataclass(eq=False)
class SyntheticPerceptionConfig(tfds.core.BuilderConfig):
    """One task of the synthetic data.

    Attributes:
      task: one of `synthetic.TASKS`.
      split_sizes: examples generated per split (ignored when building from `source_dir`).
      seed: generator seed; splits never share examples because the split name is seeded too.
      synthetic: image sizes, object counts and the like.
    """

    task: str = "counting"
    split_sizes: Mapping[str, int] = dataclasses.field(default_factory=lambda: dict(SPLIT_SIZES))
    seed: int = 0
    synthetic: synthetic.SyntheticConfig = synthetic.SyntheticConfig()


class SyntheticPerception(tfds.core.GeneratorBasedBuilder):
    """Procedural shapes and text with exact boxes, points, labels, text and ignore regions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [SyntheticPerceptionConfig(name=task, task=task) for task in synthetic.TASKS]

    def __init__(
        self,
        *,
        source_dir: epath.PathLike | None = None,
        file_format: str | None = "array_record",
        **kwargs,
    ):
        """Args: source_dir: raw source to build from instead of generating; see module doc."""
        super().__init__(file_format=file_format, **kwargs)
        self._source_dir = epath.Path(source_dir) if source_dir is not None else None

    def _info(self) -> tfds.core.DatasetInfo:
        # `dataset_info_from_configs` would need README/TAGS files beside a package; a module
        # builder states its info directly.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    "image_id": np.int64,
                    "task": tfds.features.Text(),
                    "query": tfds.features.Text(),
                    "text": tfds.features.Text(),
                    # Absolute [x1, y1, x2, y2] pixels; Tensor decodes to ndarrays, Sequence to lists.
                    "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                    "labels": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                    "points": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
                    "ignore_boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                }
            ),
            homepage="https://arxiv.org/abs/2504.07954",
            # Keep the generation order: record i is example i, as in `synthetic.SyntheticSource`,
            # and pipelines shuffle anyway.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        if self._source_dir is None:
            splits = list(self.builder_config.split_sizes)
        else:
            splits = sorted(path.stem for path in self._source_dir.glob("*.jsonl"))
            if not splits:
                raise FileNotFoundError(f"No <split>.jsonl annotations in {self._source_dir}.")
        return {split: self._generate_examples(split) for split in splits}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        """Yields `(image_id, features)`, validated, from the generator or the raw source."""
        if self._source_dir is None:
            yield from self._generated_examples(split)
        else:
            yield from self._source_examples(split)

    def _generated_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        config = self.builder_config
        for index in range(config.split_sizes[split]):
            example = synthetic.generate_example(
                config.task, index, split=split, seed=config.seed, config=config.synthetic
            )
            image = _png_bytes(example.pop("image"))
            yield index, _validated(f"{split}/{index}", image, example)

    def _source_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        with (self._source_dir / f"{split}.jsonl").open() as lines:
            for line_number, line in enumerate(lines, 1):
                name = f"{split}.jsonl line {line_number}"
                try:
                    record = json.loads(line)
                    name = f"{split}/{record['image_id']} ({name}, image {record['image']})"
                    image = (self._source_dir / record.pop("image")).read_bytes()
                except (KeyError, OSError, json.JSONDecodeError) as e:
                    raise ValueError(f"Example {name}: unreadable record ({e!r}).") from e
                example = _validated(name, image, record)
                yield example["image_id"], example


def _validated(name: str, image: bytes, annotation: Mapping) -> dict:
    """Checks one example and returns it as TFDS features; errors name the example.

    Raises:
      ValueError: if the image does not decode to RGB, a field is missing or malformed, a box
        is empty or leaves the image, or boxes, labels and points disagree in length.
    """
    try:
        with Image.open(io.BytesIO(image)) as decoded:
            decoded.load()
            width, height, mode = decoded.width, decoded.height, decoded.mode
    except Exception as e:  # PIL raises several types for bad bytes.
        raise ValueError(f"Example {name}: unreadable image ({e}).") from e
    if mode != "RGB":
        raise ValueError(f"Example {name}: image mode {mode}, expected RGB.")
    try:
        example = {
            "image": image,
            "image_id": int(annotation["image_id"]),
            "task": str(annotation["task"]),
            "query": str(annotation["query"]),
            "text": str(annotation["text"]),
            "boxes": np.asarray(annotation["boxes"], np.float32).reshape(-1, 4),
            "labels": np.asarray(annotation["labels"], np.int64).reshape(-1),
            "points": np.asarray(annotation["points"], np.float32).reshape(-1, 2),
            "ignore_boxes": np.asarray(annotation["ignore_boxes"], np.float32).reshape(-1, 4),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"Example {name}: malformed annotation ({e!r}).") from e
    if not len(example["boxes"]) == len(example["labels"]) == len(example["points"]):
        raise ValueError(f"Example {name}: boxes, labels and points differ in length.")
    limits = np.array([width, height, width, height], np.float32)
    for key in ("boxes", "ignore_boxes"):
        for box in example[key]:
            if not (
                np.all(box >= 0) and np.all(box <= limits) and box[0] < box[2] and box[1] < box[3]
            ):
                raise ValueError(
                    f"Example {name}: {key[:-2]} {box.tolist()} is empty or outside the "
                    f"{width}x{height} image."
                )
    return example


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def to_example(record: Mapping) -> dict:
    """Converts a decoded TFDS record to `synthetic.generate_example`'s structure (str, int)."""
    example = dict(record)
    for key in ("task", "query", "text"):
        example[key] = example[key].decode() if isinstance(example[key], bytes) else example[key]
    example["image_id"] = int(example["image_id"])
    return example


def write_source(
    directory: epath.PathLike,
    task: str,
    split_sizes: Mapping[str, int],
    *,
    seed: int = 0,
    config: synthetic.SyntheticConfig = synthetic.SyntheticConfig(),
) -> epath.Path:
    """Writes generated examples as a raw source directory (PNG images + JSONL annotations).

    Returns:
      The directory, to pass as `SyntheticPerception(source_dir=...)`.
    """
    directory = epath.Path(directory)
    for split, size in split_sizes.items():
        (directory / split).mkdir(parents=True, exist_ok=True)
        with (directory / f"{split}.jsonl").open("w") as out:
            for index in range(size):
                example = synthetic.generate_example(
                    task, index, split=split, seed=seed, config=config
                )
                image_path = f"{split}/{index:06d}.png"
                (directory / image_path).write_bytes(_png_bytes(example.pop("image")))
                record = {
                    k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in example.items()
                }
                out.write(json.dumps({"image": image_path, **record}) + "\n")
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=synthetic.TASKS, default="counting")
    parser.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source_dir", default=None, help="Build from a raw source instead.")
    parser.add_argument("--name", default=None, help="Config name; derived when omitted.")
    for split, size in SPLIT_SIZES.items():
        parser.add_argument(f"--{split}", type=int, default=size, help=f"{split} examples")
    args = parser.parse_args(argv)
    sizes = {split: getattr(args, split) for split in SPLIT_SIZES}
    config = args.task  # A registered config, unless the data differs from its defaults:
    if args.name or args.source_dir or (sizes, args.seed) != (SPLIT_SIZES, 0):
        name = args.name or (
            "source"
            if args.source_dir
            else "_".join([args.task, f"seed{args.seed}", *map(str, sizes.values())])
        )
        config = SyntheticPerceptionConfig(
            name=name, task=args.task, split_sizes=sizes, seed=args.seed
        )
    builder = SyntheticPerception(data_dir=args.data_dir, config=config, source_dir=args.source_dir)
    builder.download_and_prepare()
    print(f"Wrote {builder.data_dir}:", {s: i.num_examples for s, i in builder.info.splits.items()})


if __name__ == "__main__":
    main()
