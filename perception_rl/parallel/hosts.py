"""Multi-host batches: every host reads its own slice of the data stream; these helpers gather
the global batch on every host and place it on the mesh, each device taking its shard.

All are the identity (or a plain placement) in a single process, so one code path serves one
CPU, a GPU box and a TPU pod.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def gather_hosts(tree: Any, rows_per_item: int = 1) -> Any:
    """Every host's arrays, interleaved item by item along axis 0 (identity on one host).

    Host h reads examples h, h + H, h + 2H, ... of the data stream (`pipeline.make_dataset`),
    so taking item i of every host in turn, (i, host 0), (i, host 1), ..., restores the stream
    order: the global batch of H hosts is the batch one process would have read. An item is
    `rows_per_item` consecutive rows (G completions of one prompt). Every host then holds the
    same global batch, from which `global_arrays` slices its devices' shards.
    """
    hosts = jax.process_count()
    if hosts == 1:
        return tree
    from jax.experimental import multihost_utils

    def interleave(x):
        x = np.asarray(x)  # [H, n, ...] -> [n / rows, H, rows, ...] -> [H * n, ...]
        x = x.reshape(hosts, -1, rows_per_item, *x.shape[2:]).swapaxes(0, 1)
        return x.reshape(-1, *x.shape[3:])

    return jax.tree.map(interleave, multihost_utils.process_allgather(tree, tiled=False))


def host_rows(num_items: int, rows_per_item: int = 1) -> np.ndarray:
    """Rows of this host's items in a `gather_hosts` batch of `num_items` items per host."""
    items = np.arange(num_items) * jax.process_count() + jax.process_index()
    return (items[:, None] * rows_per_item + np.arange(rows_per_item)).reshape(-1)


def host_max(values: np.ndarray) -> np.ndarray:
    """Element-wise maximum of a small int vector over hosts (shapes every host pads to)."""
    if jax.process_count() == 1:
        return np.asarray(values)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(values))).max(axis=0)


def global_arrays(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Places a host-replicated numpy batch as global arrays, each device taking its shard.

    Every host must hold the same global batch (see `gather_hosts`); only the shards of its
    own devices are copied to them.
    """

    def place(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place, tree)
