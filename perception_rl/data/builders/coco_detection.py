"""TFDS builder `coco_detection`: COCO 2017 object detection from the official files.

manual_dir layout (cocodataset.org: annotations_trainval2017.zip, train2017.zip, val2017.zip):

    <manual_dir>/annotations/instances_train2017.json   -> split "train" (118,287 images)
    <manual_dir>/annotations/instances_val2017.json     -> split "validation" (5,000 images)
    <manual_dir>/train2017/000000xxxxxx.jpg, <manual_dir>/val2017/000000xxxxxx.jpg

One example per image, every image (those without objects too: COCOeval scores them all).
`boxes` hold every annotation, crowd ones included, with COCO's `iscrowd` and `area`
(segmentation area) beside them, as COCOeval needs. `labels` index `label_names`, the
categories sorted by id; ids have gaps (1–90 for 80 classes), so the metadata also keeps
`category_ids` (label index → COCO id). `image_id` is COCO's image id. The annotation file is
streamed (ijson), so memory grows with the annotation count, not with the JSON.
"""

from __future__ import annotations

import collections
from typing import ClassVar

import tensorflow_datasets as tfds

from perception_rl.data.builders import coco_json, raw

PUBLISHED = "https://cocodataset.org/#download (annotations_trainval2017.zip, *2017.zip)"
LAYOUT = "\n\n".join(__doc__.split("\n\n")[1:3])
SPLITS = {"train": "train2017", "validation": "val2017"}


class CocoDetection(raw.RawBuilder):
    """COCO 2017 detection: every image, boxes with iscrowd and area, names from categories."""

    name = "coco_detection"
    TASK = "detection"
    HOMEPAGE = "https://cocodataset.org"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    BUILDER_CONFIGS: ClassVar[list] = [
        tfds.core.BuilderConfig(name="2017", description="COCO 2017.")
    ]

    def _annotation_files(self, root):
        files = {s: root / "annotations" / f"instances_{d}.json" for s, d in SPLITS.items()}
        present = {s: f for s, f in files.items() if f.exists()}
        if not present:
            raw.require(files["validation"], PUBLISHED)
        return present

    def _label_names(self, root):
        path = next(iter(self._annotation_files(root).values()))
        found = coco_json.categories(path)
        for other in self._annotation_files(root).values():
            if coco_json.categories(other) != found:
                raise raw.RawDataError(f"{other}: categories differ from {path}'s.")
        self.info.metadata["category_ids"] = [id_ for id_, _ in found]
        return [name for _, name in found]

    def _splits(self, root):
        return {
            split: self._examples(root, path, SPLITS[split])
            for split, path in self._annotation_files(root).items()
        }

    def _examples(self, root, path, folder):
        index = {id_: i for i, (id_, _) in enumerate(coco_json.categories(path))}
        by_image = collections.defaultdict(list)
        for position, annotation in coco_json.annotations(path):
            if annotation.category_id not in index:
                raise raw.RawDataError(
                    f"{path}: annotations[{position}] (id {annotation.id}) has unknown "
                    f"category_id {annotation.category_id}."
                )
            by_image[annotation.image_id].append(annotation)
        for image in coco_json.images(path):
            yield (
                image.id,
                self._example(root, path, folder, image, by_image.pop(image.id, []), index),
            )
        if by_image:
            image_id = next(iter(by_image))
            raise raw.RawDataError(f"{path}: annotations for image_id {image_id}, not in images.")

    def _example(self, root, path, folder, image, annotations, index):
        name = f"{folder}/{image.file_name}"
        where = f"{path} image_id {image.id} ({name})"
        pixels, width, height = raw.image_bytes(root / name, PUBLISHED)
        if (width, height) != (image.width, image.height):
            raise raw.RawDataError(
                f"{where}: the file is {width}x{height}, the annotations say "
                f"{image.width}x{image.height}."
            )
        kept, boxes = [], []
        for a in annotations:
            at = f"{where} annotation {a.id}"
            box = self._box(raw.xywh_to_xyxy(a.bbox, at), width, height, at)
            if box is not None:
                kept.append(a)
                boxes.append(box)
        annotations = kept
        return raw.example(
            image=pixels,
            image_id=image.id,
            image_name=name,
            task=self.TASK,
            width=width,
            height=height,
            boxes=boxes,
            labels=[index[a.category_id] for a in annotations],
            iscrowd=[a.iscrowd for a in annotations],
            area=[a.area for a in annotations],
        )


Builder = CocoDetection
