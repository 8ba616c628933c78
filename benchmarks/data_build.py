"""Peak RSS and examples/s of building a generated COCO-format dataset with `coco_detection`.

    python benchmarks/data_build.py --images=20000 --workdir=/tmp/data_build_bench

Writes `instances_val2017.json` (COCO layout, ~7 annotations per image, each with a polygon
segmentation so the JSON is as heavy per annotation as COCO's) and 320x240 noise JPEGs (~1.5 GB
for 20,000: more than TFDS' 1 GB in-memory buffer, so the build goes through its on-disk
buckets as a real dataset does), then builds it with `python -m perception_rl.data.build coco_detection` in a child process and reports
the child's peak RSS (`ru_maxrss` of RUSAGE_CHILDREN) and examples/s of the whole build.
Refuses to measure (unless --force) when the load average shows other work.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image

GIB = 1 << 30


def write_fixture(root: str, images: int, width: int, height: int, seed: int = 0) -> int:
    """Writes the COCO-format fixture; returns the annotation count."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, "val2017"), exist_ok=True)
    # A handful of distinct JPEGs, written under every file name (speed, not pixels, matters).
    jpegs = []
    for i in range(8):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 255, (height, width, 3), np.uint8)  # noise: ~1 byte/pixel
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        jpegs.append(buffer.getvalue())
    categories = [{"id": i, "name": f"class {i}"} for i in range(1, 91) if i % 9]  # id gaps
    image_records, annotations = [], []
    for image_id in range(1, images + 1):
        name = f"{image_id:012d}.jpg"
        with open(os.path.join(root, "val2017", name), "wb") as f:
            f.write(jpegs[image_id % len(jpegs)])
        image_records.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for _ in range(int(rng.integers(0, 15))):
            x, y = rng.uniform(0, width - 20), rng.uniform(0, height - 20)
            w, h = rng.uniform(1, 40), rng.uniform(1, 40)
            polygon = np.round(rng.uniform(0, 120, 24), 2).tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": categories[int(rng.integers(len(categories)))]["id"],
                    "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h * 0.7, 2),
                    "iscrowd": int(rng.random() < 0.01),
                    "segmentation": [polygon],
                }
            )
    data = {"images": image_records, "annotations": annotations, "categories": categories}
    with open(os.path.join(root, "annotations", "instances_val2017.json"), "w") as f:
        json.dump(data, f)
    return len(annotations)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--workdir", default="/tmp/data_build_bench")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--force", action="store_true", help="measure even on a busy machine")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1) and not args.force:
        print(
            f"Load average {load:.1f} on {os.cpu_count()} cores: other work is running; "
            "rerun alone or pass --force (then the figures are flagged)."
        )
        return 1
    shutil.rmtree(args.workdir, ignore_errors=True)
    raw_dir, out = os.path.join(args.workdir, "raw"), os.path.join(args.workdir, "tfds")
    started = time.perf_counter()
    count = write_fixture(raw_dir, args.images, args.width, args.height)
    json_mb = os.path.getsize(os.path.join(raw_dir, "annotations", "instances_val2017.json")) / 1e6
    images_mb = sum(e.stat().st_size for e in os.scandir(os.path.join(raw_dir, "val2017"))) / 1e6
    print(
        f"fixture: {args.images} images ({images_mb:.0f} MB), {count} annotations, "
        f"JSON {json_mb:.0f} MB ({time.perf_counter() - started:.0f} s)"
    )
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "perception_rl.data.build",
            "coco_detection",
            f"--manual_dir={raw_dir}",
            f"--data_dir={out}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    flag = f"  [load average {load:.1f}: measured on a busy machine]" if args.force else ""
    print(
        f"build: {args.images / seconds:.0f} examples/s ({seconds:.1f} s), "
        f"peak RSS {peak / GIB:.2f} GiB{flag}"
    )
    if peak > 2 * GIB:
        print("FAIL: peak RSS above 2 GiB")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
