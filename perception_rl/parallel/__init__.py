"""Meshes, parameter partitioning and multi-host batches."""

from perception_rl.parallel.hosts import gather_hosts, global_arrays, host_max, host_rows
from perception_rl.parallel.mesh import AXES, make_mesh
from perception_rl.parallel.partitioning import (
    DEFAULT_RULES,
    sharding_for,
    spec_for,
    state_shardings,
)

__all__ = [
    "AXES",
    "DEFAULT_RULES",
    "gather_hosts",
    "global_arrays",
    "host_max",
    "host_rows",
    "make_mesh",
    "sharding_for",
    "spec_for",
    "state_shardings",
]
