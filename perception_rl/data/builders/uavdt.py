"""TFDS builder `uavdt`: UAVDT drone video frames (vehicles), subsampled by a stride.

manual_dir layout (the UAVDT benchmark, sites.google.com/view/grli-uavdt; research use only):

    <manual_dir>/UAV-benchmark-M/M0101/img000001.jpg ...   (1-based frame numbers)
    <manual_dir>/UAV-benchmark-MOTD_v1.0/GT/M0101_gt_whole.txt, M0101_gt_ignore.txt
    <manual_dir>/M_attr/train/M0101_attr.txt, M_attr/test/...   (optional)

A GT line is `frame,target_id,x,y,w,h,out_of_view,occlusion,category` (1 car, 2 truck,
3 bus); `_gt_ignore.txt` lines give ignore regions in the same columns. With `M_attr/` the
splits are "train" and "test" by its sequence lists; without it, one split "sequences" holds every
sequence that has a `_gt_whole.txt`. Configs `strideN` keep frames 1, 1+N, 1+2N, ... of each
sequence (DIP-R1's sampling is unknown; `stride10` is the default). `image_id` is
`sequence number * 1,000,000 + frame`.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from typing import ClassVar

import tensorflow_datasets as tfds

from perception_rl.data.builders import raw

PUBLISHED = "https://sites.google.com/view/grli-uavdt (UAV-benchmark-M, UAV-benchmark-MOTD_v1.0)"
LAYOUT = "\n\n".join(__doc__.split("\n\n")[1:3])
CLASS_NAMES = ("car", "truck", "bus")
_FRAME = re.compile(r"img(\d+)\.jpg$")


@dataclasses.dataclass(eq=False)
class UavdtConfig(tfds.core.BuilderConfig):
    stride: int = 10


class Uavdt(raw.RawBuilder):
    """UAVDT vehicles (car, truck, bus) with ignore regions, every `stride`-th frame."""

    name = "uavdt"
    TASK = "crowd"
    HOMEPAGE = "https://sites.google.com/view/grli-uavdt"
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    BUILDER_CONFIGS: ClassVar[list] = [
        UavdtConfig(name=f"stride{n}", stride=n, description=f"Every {n}th frame.")
        for n in (10, 1, 5, 30)
    ]

    def _label_names(self, root):
        return CLASS_NAMES

    def _splits(self, root):
        gt = root / "UAV-benchmark-MOTD_v1.0" / "GT"
        gt = gt if gt.exists() else root / "GT"
        raw.require(gt, PUBLISHED)
        sequences = sorted(
            name[: -len("_gt_whole.txt")]
            for name in os.listdir(gt)
            if name.endswith("_gt_whole.txt")
        )
        if not sequences:
            raise raw.MissingFileError(f"No M####_gt_whole.txt in {gt}; get it from {PUBLISHED}.")
        attributes = root / "M_attr"
        if not attributes.exists():
            return {"sequences": self._examples(root, gt, sequences)}
        splits = {}
        for split in ("train", "test"):
            listed = {
                n.split("_")[0] for n in os.listdir(raw.require(attributes / split, PUBLISHED))
            }
            splits[split] = self._examples(root, gt, [s for s in sequences if s in listed])
        return splits

    def _examples(self, root, gt, sequences):
        stride = self.builder_config.stride
        for sequence in sequences:
            boxes = _gt_rows(gt / f"{sequence}_gt_whole.txt", with_category=True)
            ignore_file = gt / f"{sequence}_gt_ignore.txt"
            ignores = _gt_rows(ignore_file, with_category=False) if ignore_file.exists() else {}
            folder = raw.require(root / "UAV-benchmark-M" / sequence, PUBLISHED)
            frames = sorted(int(m.group(1)) for n in os.listdir(folder) if (m := _FRAME.match(n)))
            for frame in frames:
                if (frame - 1) % stride:
                    continue
                yield (
                    f"{sequence}/{frame}",
                    self._example(
                        root, sequence, frame, boxes.get(frame, []), ignores.get(frame, [])
                    ),
                )

    def _example(self, root, sequence, frame, rows, ignore_rows):
        name = f"UAV-benchmark-M/{sequence}/img{frame:06d}.jpg"
        image, width, height = raw.image_bytes(root / name, PUBLISHED)
        rows = [(b, c) for w, b, c in rows if self._box(b, width, height, w) is not None]
        ignore = [b for w, b, _ in ignore_rows if self._box(b, width, height, w) is not None]
        return raw.example(
            image=image,
            image_id=int(sequence.lstrip("M")) * 1_000_000 + frame,
            image_name=name,
            task=self.TASK,
            width=width,
            height=height,
            query="vehicle",
            boxes=[box for box, _ in rows],
            labels=[category - 1 for _, category in rows],
            ignore_boxes=ignore,
        )


def _gt_rows(path, *, with_category: bool) -> dict[int, list]:
    """frame → [(where, [x1, y1, x2, y2], category)] of a UAVDT GT file."""
    rows = collections.defaultdict(list)
    with path.open() as lines:
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            where = f"{path} line {index + 1}"
            try:
                values = [float(v) for v in line.replace(",", " ").split()]
                frame = int(values[0])
                category = int(values[8]) if with_category else 0
            except (ValueError, IndexError) as e:
                raise raw.RawDataError(f"{where}: not frame,id,x,y,w,h,out,occ,category ({e}).")
            if with_category and category not in (1, 2, 3):
                raise raw.RawDataError(f"{where}: category {category} is not 1, 2 or 3.")
            rows[frame].append((where, raw.xywh_to_xyxy(values[2:6], where), category))
    return rows


Builder = Uavdt
