"""TFDS builder `wider_pedestrian`: WIDER Face & Person Challenge (2019), pedestrian track.

manual_dir layout (wider-challenge.org via CodaLab; no public spec was found, so the layout
below follows the challenge's released tools and every other layout fails clearly):

    <manual_dir>/train_annotations.txt   -> split "train"
    <manual_dir>/val_annotations.txt     -> split "validation"
    <manual_dir>/train_ignore.txt, val_ignore.txt   (optional ignore regions)
    <manual_dir>/images/<image name>

An annotation line is `<image name> c x y w h c x y w h ...` (config `default`: c = 1
pedestrian, 2 cyclist; boxes [x, y, w, h] integer pixels) or `<image name> x y w h ...`
(config `no_class`: every box a pedestrian). An ignore line is `<image name> x y w h ...`.
An image without boxes still has a line. `image_id` is the line's index.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import tensorflow_datasets as tfds

from perception_rl.data.builders import raw

PUBLISHED = "https://wider-challenge.org (WIDER Face & Person Challenge 2019, pedestrian track)"
LAYOUT = "\n\n".join(__doc__.split("\n\n")[1:3])
SPLITS = {"train": "train", "validation": "val"}


@dataclasses.dataclass(eq=False)
class WiderConfig(tfds.core.BuilderConfig):
    """with_class: each box is preceded by its class (1 pedestrian, 2 cyclist)."""

    with_class: bool = True


class WiderPedestrian(raw.RawBuilder):
    """WiderPedestrian: pedestrians and cyclists in surveillance and driving scenes."""

    name = "wider_pedestrian"
    TASK = "crowd"
    HOMEPAGE = "https://wider-challenge.org"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    BUILDER_CONFIGS: ClassVar[list] = [
        WiderConfig(name="default", with_class=True, description="c x y w h per box."),
        WiderConfig(name="no_class", with_class=False, description="x y w h per box."),
    ]

    def _label_names(self, root):
        return ["pedestrian", "cyclist"]

    def _splits(self, root):
        files = {s: root / f"{d}_annotations.txt" for s, d in SPLITS.items()}
        present = {s: f for s, f in files.items() if f.exists()}
        if not present:
            raw.require(files["validation"], PUBLISHED)
        return {
            s: self._examples(root, path, root / f"{SPLITS[s]}_ignore.txt")
            for s, path in present.items()
        }

    def _examples(self, root, path, ignore_path):
        ignores = _ignore_regions(ignore_path) if ignore_path.exists() else {}
        width_per_box = 5 if self.builder_config.with_class else 4
        with path.open() as lines:
            for index, line in enumerate(lines):
                fields = line.split()
                if not fields:
                    continue
                where = f"{path} line {index + 1}"
                image_name, values = fields[0], _numbers(fields[1:], where)
                if len(values) % width_per_box:
                    raise raw.RawDataError(
                        f"{where}: {len(values)} numbers after {image_name}, not a multiple of "
                        f"{width_per_box} ({'c x y w h' if width_per_box == 5 else 'x y w h'})."
                    )
                name = f"images/{image_name}"
                image, width, height = raw.image_bytes(root / name, PUBLISHED)
                boxes, labels = [], []
                for start in range(0, len(values), width_per_box):
                    group = values[start : start + width_per_box]
                    label = int(group[0]) if width_per_box == 5 else 1
                    if label not in (1, 2):
                        raise raw.RawDataError(f"{where}: class {group[0]} is not 1 or 2.")
                    box = self._box(raw.xywh_to_xyxy(group[-4:], where), width, height, where)
                    if box is not None:
                        boxes.append(box)
                        labels.append(label - 1)
                at = f"{ignore_path} ({image_name})"
                ignore = [b for b in ignores.pop(image_name, []) if self._box(b, width, height, at)]
                yield (
                    image_name,
                    raw.example(
                        image=image,
                        image_id=index,
                        image_name=name,
                        task=self.TASK,
                        width=width,
                        height=height,
                        query="pedestrian",
                        boxes=boxes,
                        labels=labels,
                        ignore_boxes=ignore,
                    ),
                )
        if ignores:
            raise raw.RawDataError(
                f"{ignore_path}: ignore regions for {next(iter(ignores))}, an image not in {path}."
            )


def _numbers(fields, where) -> list[float]:
    try:
        return [float(v) for v in fields]
    except ValueError as e:
        raise raw.RawDataError(f"{where}: {e}.") from e


def _ignore_regions(path) -> dict[str, list[list[float]]]:
    """image name → ignore boxes [x1, y1, x2, y2] of an ignore file."""
    regions = {}
    with path.open() as lines:
        for index, line in enumerate(lines):
            fields = line.split()
            if not fields:
                continue
            where = f"{path} line {index + 1}"
            values = _numbers(fields[1:], where)
            if len(values) % 4:
                raise raw.RawDataError(f"{where}: {len(values)} numbers, not x y w h groups.")
            regions.setdefault(fields[0], []).extend(
                raw.xywh_to_xyxy(values[i : i + 4], where) for i in range(0, len(values), 4)
            )
    return regions


Builder = WiderPedestrian
