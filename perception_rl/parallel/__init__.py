"""Meshes and parameter partitioning."""

from perception_rl.parallel.mesh import AXES, make_mesh
from perception_rl.parallel.partitioning import (
    DEFAULT_RULES,
    sharding_for,
    spec_for,
    state_shardings,
)

__all__ = ["AXES", "DEFAULT_RULES", "make_mesh", "sharding_for", "spec_for", "state_shardings"]
