"""Helpers for the real-dataset builder tests: tiny images and a build-then-read round trip."""

import io
import os

import numpy as np
from PIL import Image


def write_image(path, width, height, *, mode="RGB", fmt="JPEG", seed=0):
    """Writes a small image of `width` x `height`; returns its bytes."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())
    return buffer.getvalue()


def build(name, manual_dir, data_dir, **kwargs):
    """Builds `name` from `manual_dir` into `data_dir`; returns the builder."""
    import tensorflow_datasets as tfds

    from perception_rl.data import datasets

    builder = datasets.builder(name, data_dir=data_dir, **kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def read(name, split, data_dir):
    """Every example of a built split, in order."""
    from perception_rl.data import datasets

    source = datasets.source(name, split, data_dir=data_dir)
    return [source[i] for i in range(len(source))]
