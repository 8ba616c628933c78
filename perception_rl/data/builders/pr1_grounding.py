"""TFDS builder `pr1_grounding`: Perception-R1's own grounding files, as its users have them.

manual_dir layout (huggingface.co/datasets/Kangheng/refcoco_320k for training; the evaluation
JSONs of Perception-R1's release, github.com/linkangheng/PR1):

    <manual_dir>/refcoco_320k/**/*.parquet    -> split "train" (rows: problem, solution, image)
    <manual_dir>/refcoco_val.json, refcoco_testA.json, refcoco_testB.json,
    refcocop_val.json, refcocop_testA.json, refcocop_testB.json,
    refcocog_val.json, refcocog_test.json     -> a split named after each file present
    <manual_dir>/<image> for each JSON item's `image` path (else <manual_dir>/images/<name>)

Training rows embed the image (`image.bytes`); `solution` is the string "[x1,y1,x2,y2]" in
pixels. Evaluation items are `{image, problem, solution, normalized_solution}` with
`solution` in pixels (`normalized_solution`, 0–1000, is not needed). `query` is `problem` as
given; `image_id` is the row's (item's) index in its split. PR1 trains on the first 5,000
training rows: set data.num_examples accordingly.
"""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq

from perception_rl.data.builders import raw

PUBLISHED = (
    "https://huggingface.co/datasets/Kangheng/refcoco_320k and "
    "https://github.com/linkangheng/PR1 (evaluation JSONs)"
)
LAYOUT = "\n\n".join(__doc__.split("\n\n")[1:3])
EVAL_FILES = [
    f"{d}_{s}"
    for d, splits in (
        ("refcoco", ("val", "testA", "testB")),
        ("refcocop", ("val", "testA", "testB")),
        ("refcocog", ("val", "test")),
    )
    for s in splits
]


class Pr1Grounding(raw.RawBuilder):
    """Perception-R1's grounding data: refcoco_320k for training, its RefCOCO/+/g eval JSONs."""

    name = "pr1_grounding"
    TASK = "grounding"
    HOMEPAGE = "https://github.com/linkangheng/PR1"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT

    def _label_names(self, root):
        return ["object"]  # PR1's files name no categories: one generic label.

    def _splits(self, root):
        splits = {}
        parquets = _parquet_files(root / "refcoco_320k")
        if parquets:
            splits["train"] = self._train(parquets)
        for stem in EVAL_FILES:
            if (root / f"{stem}.json").exists():
                splits[stem] = self._evaluation(root, root / f"{stem}.json")
        if not splits:
            raw.require(root / "refcoco_val.json", PUBLISHED)
        return splits

    def _train(self, paths):
        index = 0
        for path in paths:
            parquet = pq.ParquetFile(path)
            missing = {"problem", "solution", "image"} - set(parquet.schema_arrow.names)
            if missing:
                raise raw.RawDataError(f"{path}: no column(s) {sorted(missing)}.")
            columns = ["problem", "solution", "image"]
            for batch in parquet.iter_batches(batch_size=64, columns=columns):
                for row in batch.to_pylist():
                    where = f"{path} row {index}"
                    try:
                        data = row["image"]["bytes"]
                    except (TypeError, KeyError) as e:
                        raise raw.RawDataError(f"{where}: no image bytes ({e!r}).") from e
                    image, width, height = raw.rgb_bytes(data, where)
                    name = (
                        (row["image"].get("path") or "") if isinstance(row["image"], dict) else ""
                    )
                    example = self._example(where, index, image, name, width, height, row)
                    if example is not None:
                        yield index, example
                    index += 1

    def _evaluation(self, root, path):
        try:
            items = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise raw.RawDataError(f"{path}: not JSON ({e}).") from e
        if not isinstance(items, list):
            raise raw.RawDataError(f"{path}: expected a list of items.")
        for index, item in enumerate(items):
            where = f"{path} item {index}"
            try:
                relative = str(item["image"])
            except (KeyError, TypeError) as e:
                raise raw.RawDataError(f"{where}: no image ({e!r}).") from e
            path_on_disk = root / relative
            if not path_on_disk.exists():
                path_on_disk = root / "images" / os.path.basename(relative)
            image, width, height = raw.image_bytes(path_on_disk, PUBLISHED)
            name = os.path.relpath(os.fspath(path_on_disk), os.fspath(root))
            example = self._example(where, index, image, name, width, height, item)
            if example is not None:
                yield index, example

    def _example(self, where, index, image, name, width, height, record):
        try:
            query, solution = str(record["problem"]), record["solution"]
        except (KeyError, TypeError) as e:
            raise raw.RawDataError(f"{where}: missing {e}.") from e
        box = self._box(_box(solution, where), width, height, where)
        if box is None:
            return None  # Skipped and counted: an expression needs its box.
        return raw.example(
            image=image,
            image_id=index,
            image_name=name,
            task=self.TASK,
            width=width,
            height=height,
            query=query,
            boxes=[box],
            labels=[0],
        )


def _box(solution, where: str) -> list[float]:
    """`[x1, y1, x2, y2]` from a list or its string form ("[x1,y1,x2,y2]")."""
    try:
        values = json.loads(solution) if isinstance(solution, str) else solution
        box = [float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise raw.RawDataError(f"{where}: solution {solution!r} is not [x1,y1,x2,y2].") from e
    if len(box) != 4:
        raise raw.RawDataError(f"{where}: solution {solution!r} is not [x1,y1,x2,y2].")
    return box


def _parquet_files(folder) -> list:
    if not folder.exists():
        return []
    found = []
    for directory, _, names in os.walk(folder):
        found += [
            folder / os.path.relpath(os.path.join(directory, n), folder)
            for n in names
            if n.endswith(".parquet")
        ]
    return sorted(found)


Builder = Pr1Grounding
