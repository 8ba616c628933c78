"""TFDS builder `crowdhuman`: CrowdHuman's odgt annotations and images.

manual_dir layout (crowdhuman.org; the CrowdHuman_*.zip files unzipped into one `Images/`):

    <manual_dir>/annotation_train.odgt   -> split "train" (15,000 images)
    <manual_dir>/annotation_val.odgt     -> split "validation" (4,370 images)
    <manual_dir>/Images/<ID>.jpg

Configs: `full` (default: full-body `fbox`, as CrowdHuman's detection benchmark) and
`visible` (`vbox`). A box with `tag == "mask"` (crowds, reflections, posters) or
`extra.ignore == 1` becomes an ignore region, as in the official evaluation; a missing
`extra.ignore` counts as 0. Full boxes often extend past the image: they are stored as given
(the official evaluation clips them). `image_id` is the line's index in the odgt file.
"""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import tensorflow_datasets as tfds

from perception_rl.data.builders import raw

PUBLISHED = "https://www.crowdhuman.org (annotation_*.odgt, CrowdHuman_*.zip)"
LAYOUT = "\n\n".join(__doc__.split("\n\n")[1:3])
ANNOTATIONS = {"train": "annotation_train.odgt", "validation": "annotation_val.odgt"}


@dataclasses.dataclass(eq=False)
class CrowdHumanConfig(tfds.core.BuilderConfig):
    """box: the odgt box kept per person, "fbox" (full body) or "vbox" (visible part)."""

    box: str = "fbox"


class CrowdHuman(raw.RawBuilder):
    """CrowdHuman pedestrians (full-body or visible boxes) with ignore regions."""

    name = "crowdhuman"
    TASK = "crowd"
    HOMEPAGE = "https://www.crowdhuman.org"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    BUILDER_CONFIGS: ClassVar[list] = [
        CrowdHumanConfig(name="full", box="fbox", description="Full-body boxes (fbox)."),
        CrowdHumanConfig(name="visible", box="vbox", description="Visible boxes (vbox)."),
    ]

    def _label_names(self, root):
        return ["person"]

    def _splits(self, root):
        present = {s: root / f for s, f in ANNOTATIONS.items() if (root / f).exists()}
        if not present:
            raw.require(root / ANNOTATIONS["validation"], PUBLISHED)
        return {split: self._examples(root, path) for split, path in present.items()}

    def _examples(self, root, path):
        with path.open() as lines:
            for index, line in enumerate(lines):
                if not line.strip():
                    continue
                where = f"{path} line {index + 1}"
                try:
                    record = json.loads(line)
                    name = f"Images/{record['ID']}.jpg"
                    gtboxes = list(record["gtboxes"])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise raw.RawDataError(f"{where}: not an odgt record ({e!r}).") from e
                image, width, height = raw.image_bytes(root / name, PUBLISHED)
                boxes, ignore = self._boxes(gtboxes, width, height, f"{where} (ID {record['ID']})")
                yield (
                    record["ID"],
                    raw.example(
                        image=image,
                        image_id=index,
                        image_name=name,
                        task=self.TASK,
                        width=width,
                        height=height,
                        query="person",
                        boxes=boxes,
                        labels=[0] * len(boxes),
                        ignore_boxes=ignore,
                    ),
                )

    def _boxes(self, gtboxes, width, height, where):
        """(person boxes, ignore regions) as [x1, y1, x2, y2], in the file's order."""
        boxes, ignore = [], []
        for i, gtbox in enumerate(gtboxes):
            at = f"{where} gtboxes[{i}]"
            try:
                tag, xywh = gtbox["tag"], gtbox[self.builder_config.box]
                ignored = tag != "person" or int((gtbox.get("extra") or {}).get("ignore", 0)) != 0
            except (KeyError, TypeError, ValueError) as e:
                raise raw.RawDataError(f"{at}: malformed gtbox ({e!r}).") from e
            box = self._box(raw.xywh_to_xyxy(xywh, at), width, height, at)
            if box is None:
                continue
            (ignore if ignored else boxes).append(box)
        return boxes, ignore


Builder = CrowdHuman
