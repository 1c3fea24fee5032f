"""Meshes, logical-axis rules and multi-host start-up."""

from gsjax.parallel.mesh import AXES, initialize_distributed, make_mesh, mesh_shape
from gsjax.parallel.sharding import shard_module, state_shardings
from gsjax.parallel.rules import (
    DEFAULT_RULES,
    constrain,
    current_rules,
    logical_to_spec,
    named_sharding,
    use_rules,
)

__all__ = [
    "AXES",
    "DEFAULT_RULES",
    "constrain",
    "current_rules",
    "initialize_distributed",
    "logical_to_spec",
    "make_mesh",
    "mesh_shape",
    "named_sharding",
    "shard_module",
    "state_shardings",
    "use_rules",
]
