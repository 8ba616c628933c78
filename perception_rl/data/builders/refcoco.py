"""TFDS builder `refcoco`: RefCOCO, RefCOCO+ and RefCOCOg from the `refer` toolkit's files.

One example per referring expression (evaluation is per expression), in the datasets' own
split names. manual_dir layout (the refer zips unzipped, plus COCO train2014 images):

    <manual_dir>/refcoco/refs(unc).p       <manual_dir>/refcoco/instances.json
    <manual_dir>/refcoco+/refs(unc).p      <manual_dir>/refcoco+/instances.json
    <manual_dir>/refcocog/refs(umd).p      <manual_dir>/refcocog/instances.json
    <manual_dir>/train2014/COCO_train2014_000000xxxxxx.jpg

Example: `query` is the sentence (`sent`), `boxes` the referred object's box
([x, y, w, h] of instances.json → [x1, y1, x2, y2]), `labels` its category (label names are
instances.json's categories), `image_id` the sentence id. The pickle is read with an
unpickler that refuses every global (`safe_pickle`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import tensorflow_datasets as tfds
from etils import epath

from perception_rl.data.builders import coco_json, raw, safe_pickle

LAYOUT = """Unzip the refer toolkit's refcoco.zip, refcoco+.zip and refcocog.zip into manual_dir
and put the COCO train2014 images beside them:
    <manual_dir>/refcoco/refs(unc).p, <manual_dir>/refcoco/instances.json
    <manual_dir>/refcoco+/refs(unc).p, <manual_dir>/refcoco+/instances.json
    <manual_dir>/refcocog/refs(umd).p (refs(google).p), <manual_dir>/refcocog/instances.json
    <manual_dir>/train2014/COCO_train2014_000000xxxxxx.jpg
"""
REFER = "https://github.com/lichengunc/refer (refcoco.zip, refcoco+.zip, refcocog.zip)"
COCO_IMAGES = "https://cocodataset.org (train2014.zip)"


@dataclasses.dataclass(eq=False)
class RefCocoConfig(tfds.core.BuilderConfig):
    """dataset: folder under manual_dir; split_by: the refs(<split_by>).p partition."""

    dataset: str = "refcoco"
    split_by: str = "unc"


class RefCoco(raw.RawBuilder):
    """RefCOCO / RefCOCO+ / RefCOCOg referring expressions (one example per expression)."""

    name = "refcoco"
    TASK = "grounding"
    HOMEPAGE = "https://github.com/lichengunc/refer"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    BUILDER_CONFIGS: ClassVar[list] = [
        RefCocoConfig(name="refcoco_unc", dataset="refcoco", split_by="unc"),
        RefCocoConfig(name="refcocoplus_unc", dataset="refcoco+", split_by="unc"),
        RefCocoConfig(name="refcocog_umd", dataset="refcocog", split_by="umd"),
        RefCocoConfig(name="refcocog_google", dataset="refcocog", split_by="google"),
    ]

    def _files(self, root: epath.Path) -> tuple[epath.Path, epath.Path]:
        folder = root / self.builder_config.dataset
        refs = raw.require(folder / f"refs({self.builder_config.split_by}).p", REFER)
        return refs, raw.require(folder / "instances.json", REFER)

    def _label_names(self, root):
        return [name for _, name in coco_json.categories(self._files(root)[1])]

    def _splits(self, root):
        refs_path, instances = self._files(root)
        refs = _load_refs(refs_path)
        index = {id_: i for i, (id_, _) in enumerate(coco_json.categories(instances))}
        images = {image.id: image for image in coco_json.images(instances)}
        wanted = {ref["ann_id"] for ref in refs}
        boxes = {a.id: a for _, a in coco_json.annotations(instances) if a.id in wanted}
        splits = list(dict.fromkeys(ref["split"] for ref in refs))  # first-seen order
        return {
            split: self._examples(root, split, refs, images, boxes, index, refs_path)
            for split in splits
        }

    def _examples(self, root, split, refs, images, annotations, index, refs_path):
        for ref in refs:
            if ref["split"] != split:
                continue
            where = f"{refs_path} ref_id {ref['ref_id']}"
            annotation = annotations.get(ref["ann_id"])
            image = images.get(ref["image_id"])
            if annotation is None or image is None:
                raise raw.RawDataError(
                    f"{where}: ann_id {ref['ann_id']} / image_id {ref['image_id']} not in "
                    f"{refs_path.parent / 'instances.json'}."
                )
            if annotation.category_id not in index:
                raise raw.RawDataError(f"{where}: unknown category_id {annotation.category_id}.")
            name = f"train2014/{image.file_name}"
            pixels, width, height = raw.image_bytes(root / name, COCO_IMAGES)
            if (width, height) != (image.width, image.height):
                raise raw.RawDataError(
                    f"{where}: {name} is {width}x{height}, instances.json says "
                    f"{image.width}x{image.height}."
                )
            box = self._box(raw.xywh_to_xyxy(annotation.bbox, where), width, height, where)
            if box is None:
                continue  # Skipped and counted: the ref's expressions need its box.
            for sentence in ref["sentences"]:
                yield (
                    sentence["sent_id"],
                    raw.example(
                        image=pixels,
                        image_id=sentence["sent_id"],
                        image_name=name,
                        task=self.TASK,
                        width=width,
                        height=height,
                        query=_text(sentence["sent"]),
                        boxes=[box],
                        labels=[index[annotation.category_id]],
                        area=[annotation.area],
                        iscrowd=[annotation.iscrowd],
                    ),
                )


def _load_refs(path: epath.Path) -> list[dict]:
    """The refs of a `refs(<splitBy>).p`, each checked for the fields the builder reads."""
    refs = safe_pickle.loads(path.read_bytes(), name=str(path))
    if not isinstance(refs, list):
        raise raw.RawDataError(f"{path}: expected a list of refs, found {type(refs).__name__}.")
    for i, ref in enumerate(refs):
        try:
            missing = {"ref_id", "ann_id", "image_id", "split", "sentences"} - set(ref)
            bad_sentences = [s for s in ref["sentences"] if not {"sent", "sent_id"} <= set(s)]
        except (TypeError, KeyError) as e:
            raise raw.RawDataError(f"{path}: ref #{i} is not a ref dict ({e!r}).") from e
        if missing or bad_sentences:
            raise raw.RawDataError(
                f"{path}: ref #{i} (ref_id {ref.get('ref_id')}) lacks "
                f"{sorted(missing) or 'sent/sent_id in a sentence'}."
            )
    return refs


def _text(value: str) -> str:
    """A sentence as text: Python 2 pickles store UTF-8 bytes, which load as latin-1."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


Builder = RefCoco
