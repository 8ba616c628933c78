"""TFDS builder `citypersons`: CityPersons boxes (`.mat`) over Cityscapes images.

manual_dir layout (github.com/cvgroup-njust/CityPersons annotations; Cityscapes leftImg8bit
from cityscapes-dataset.com, registration required):

    <manual_dir>/annotations/anno_train.mat   -> split "train" (2,975 images)
    <manual_dir>/annotations/anno_val.mat     -> split "validation" (500 images)
    <manual_dir>/leftImg8bit/{train,val}/<city>/<im_name>

Each `bbs` row is `[class, x1, y1, w, h, instance_id, x1_vis, y1_vis, w_vis, h_vis]`; classes
0 ignore region, 1 pedestrian, 2 rider, 3 sitting person, 4 other person, 5 person group.
Configs:
  * `all` (default): classes 1–4 are boxes (label names pedestrian, rider, sitting person,
    person (other)); classes 0 and 5 are ignore regions.
  * `reasonable`: the standard evaluation subset: pedestrians (class 1) at least 50 px tall
    and at least 65% visible are boxes; every other row becomes an ignore region.
Full boxes are stored as given (they may leave the image); `image_id` is the image's index.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from perception_rl.data.builders import raw

PUBLISHED = "https://github.com/cvgroup-njust/CityPersons (annotations) and cityscapes-dataset.com"
LAYOUT = "\n\n".join(__doc__.split("\n\n")[1:3])
SPLITS = {"train": "train", "validation": "val"}
CLASS_NAMES = ("pedestrian", "rider", "sitting person", "person (other)")  # classes 1–4
IGNORE_CLASSES = (0, 5)


@dataclasses.dataclass(eq=False)
class CityPersonsConfig(tfds.core.BuilderConfig):
    """reasonable: keep only the Reasonable subset as boxes (min_height px, min_visibility)."""

    reasonable: bool = False
    min_height: float = 50.0
    min_visibility: float = 0.65


class CityPersons(raw.RawBuilder):
    """CityPersons pedestrians with ignore regions (all persons, or the Reasonable subset)."""

    name = "citypersons"
    TASK = "crowd"
    HOMEPAGE = "https://github.com/cvgroup-njust/CityPersons"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    BUILDER_CONFIGS: ClassVar[list] = [
        CityPersonsConfig(name="all", description="Classes 1-4 as boxes; 0 and 5 ignored."),
        CityPersonsConfig(
            name="reasonable", reasonable=True, description="Reasonable: h >= 50, vis >= 0.65."
        ),
    ]

    def _label_names(self, root):
        return CLASS_NAMES[:1] if self.builder_config.reasonable else CLASS_NAMES

    def _splits(self, root):
        files = {s: root / "annotations" / f"anno_{d}.mat" for s, d in SPLITS.items()}
        present = {s: f for s, f in files.items() if f.exists()}
        if not present:
            raw.require(files["validation"], PUBLISHED)
        return {s: self._examples(root, path, SPLITS[s]) for s, path in present.items()}

    def _examples(self, root, path, folder):
        for index, (city, im_name, rows) in enumerate(_records(path)):
            name = f"leftImg8bit/{folder}/{city}/{im_name}"
            where = f"{path} record {index} ({im_name})"
            image, width, height = raw.image_bytes(root / name, PUBLISHED)
            boxes, labels, ignore = self._boxes(rows, width, height, where)
            yield (
                im_name,
                raw.example(
                    image=image,
                    image_id=index,
                    image_name=name,
                    task=self.TASK,
                    width=width,
                    height=height,
                    query="person",
                    boxes=boxes,
                    labels=labels,
                    ignore_boxes=ignore,
                ),
            )

    def _boxes(self, rows, width, height, where):
        config = self.builder_config
        boxes, labels, ignore = [], [], []
        for i, row in enumerate(rows):
            at = f"{where} bbs row {i}"
            label = int(row[0])
            if label not in range(6):
                raise raw.RawDataError(f"{at}: class {label} is not 0-5.")
            box = self._box(raw.xywh_to_xyxy(row[1:5], at), width, height, at)
            if box is None:
                continue
            if config.reasonable:
                area = row[3] * row[4]
                visibility = row[8] * row[9] / area if area > 0 else 0.0
                kept = (
                    label == 1
                    and row[4] >= config.min_height
                    and visibility >= config.min_visibility
                )
            else:
                kept = label not in IGNORE_CLASSES
            if kept:
                boxes.append(box)
                labels.append(0 if config.reasonable else label - 1)
            else:
                ignore.append(box)
        return boxes, labels, ignore


def _records(path):
    """(city, im_name, bbs [n, 10]) per image of an `anno_<split>.mat`."""
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except (ValueError, OSError, TypeError) as e:
        raise raw.RawDataError(f"{path}: not a readable .mat file ({e}).") from e
    keys = [k for k in mat if k.startswith("anno_")]
    if len(keys) != 1:
        raise raw.RawDataError(f"{path}: expected one anno_<split>_aligned variable, found {keys}.")
    for index, cell in enumerate(np.atleast_1d(mat[keys[0]])):
        try:
            city = getattr(cell, "cityname", None) or cell.city_name
            rows = np.asarray(cell.bbs, np.float64).reshape(-1, 10)
            yield str(city), str(cell.im_name), rows
        except (AttributeError, ValueError) as e:
            raise raw.RawDataError(f"{path} record {index}: not a CityPersons record ({e}).") from e


Builder = CityPersons
