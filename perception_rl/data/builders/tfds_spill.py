"""Lets TFDS spill large splits to disk without TensorFlow.

TFDS' writer keeps up to 1 GB of serialized examples in memory, then moves them to 1,000
temporary bucket files that it writes and reads through `tf.io.gfile` (tfds 4.9.10,
`core/shuffle.py`), the one place of an array_record build that still imports TensorFlow: a
split above 1 GB (CrowdHuman, COCO, RefCOCO train) fails there when TF is absent. Where TF
cannot be imported, `install()` hands that module a stand-in with the four calls it makes,
backed by `etils.epath` (local and cloud paths). With TF installed, nothing changes.
"""

from __future__ import annotations

import importlib.util
import types

from etils import epath


class _NeverRaised(Exception):
    """Stands for tf.errors.ResourceExhaustedError, which only TF's file layer raises."""


def _gfile(path, mode: str = "r"):
    return epath.Path(path).open(mode)


def _exists(path) -> bool:
    return epath.Path(path).exists()


def _remove(path) -> None:
    epath.Path(path).unlink()


FILE_LAYER = types.SimpleNamespace(
    io=types.SimpleNamespace(
        gfile=types.SimpleNamespace(GFile=_gfile, exists=_exists, remove=_remove)
    ),
    errors=types.SimpleNamespace(ResourceExhaustedError=_NeverRaised),
)


def install() -> None:
    """Gives TFDS' shuffle module the epath file layer when TensorFlow cannot be imported."""
    from tensorflow_datasets.core import shuffle

    if importlib.util.find_spec("tensorflow") is None:
        shuffle.tf = FILE_LAYER
