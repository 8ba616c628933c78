"""Streaming reader of COCO-style `instances*.json` (COCO 2017, the refer toolkit's files).

`json.load` of instances_train2017.json (448 MB) holds several GB of Python objects, mostly
segmentation polygons no builder needs. ijson streams each section instead, keeping only the
fields below, so memory grows with the number of annotations, not with the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import ijson
from etils import epath

from perception_rl.data.builders.raw import RawDataError


@dataclasses.dataclass(frozen=True)
class Annotation:
    id: int
    image_id: int
    category_id: int
    bbox: tuple  # [x, y, w, h] pixels, as given
    iscrowd: int
    area: float


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    id: int
    file_name: str
    width: int
    height: int


def _items(path: epath.Path, section: str) -> Iterator[tuple[int, dict]]:
    """(index, item) of the top-level list `section`; a parse error names the file."""
    try:
        with path.open("rb") as f:
            yield from enumerate(ijson.items(f, f"{section}.item", use_float=True))
    except ijson.JSONError as e:
        raise RawDataError(f"{path}: malformed JSON in {section!r} ({e}).") from e


def _field(path: epath.Path, section: str, index: int, item, keys: tuple[str, ...]) -> tuple:
    try:
        return tuple(item[k] for k in keys)
    except (KeyError, TypeError) as e:
        raise RawDataError(f"{path}: {section}[{index}] has no {e} ({str(item)[:200]}).") from e


def categories(path: epath.Path) -> list[tuple[int, str]]:
    """`(id, name)` of every category, sorted by id (ids may have gaps: COCO's 1–90)."""
    found = [
        _field(path, "categories", i, c, ("id", "name")) for i, c in _items(path, "categories")
    ]
    return sorted((int(i), str(n)) for i, n in found)


def images(path: epath.Path) -> Iterator[ImageInfo]:
    keys = ("id", "file_name", "width", "height")
    for index, item in _items(path, "images"):
        id_, file_name, width, height = _field(path, "images", index, item, keys)
        yield ImageInfo(int(id_), str(file_name), int(width), int(height))


def annotations(path: epath.Path) -> Iterator[tuple[int, Annotation]]:
    """`(index, annotation)`; `iscrowd` defaults to 0 and `area` to the box area if absent."""
    keys = ("id", "image_id", "category_id", "bbox")
    for index, item in _items(path, "annotations"):
        id_, image_id, category_id, bbox = _field(path, "annotations", index, item, keys)
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise RawDataError(
                f"{path}: annotations[{index}] (id {id_}) bbox {bbox!r} is not [x, y, w, h]."
            )
        area = item.get("area")
        area = float(bbox[2]) * float(bbox[3]) if area is None else float(area)
        yield (
            index,
            Annotation(
                int(id_),
                int(image_id),
                int(category_id),
                tuple(map(float, bbox)),
                int(item.get("iscrowd", 0)),
                area,
            ),
        )
