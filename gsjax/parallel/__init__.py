"""Meshes, logical-axis rules and multi-host start-up."""

from gsjax.parallel.hosts import allgather_rows, allgather_strings, barrier, is_primary, process_share
from gsjax.parallel.mesh import AXES, initialize_distributed, make_mesh, mesh_shape, process_mesh
from gsjax.parallel.sharding import localize, shard_module, state_shardings
from gsjax.parallel.rules import (
    DEFAULT_RULES,
    SAMPLER_RULES,
    compute_value,
    constrain,
    current_rules,
    logical_to_spec,
    named_sharding,
    use_rules,
)

__all__ = [
    "AXES",
    "allgather_rows",
    "allgather_strings",
    "barrier",
    "is_primary",
    "DEFAULT_RULES",
    "SAMPLER_RULES",
    "compute_value",
    "constrain",
    "current_rules",
    "initialize_distributed",
    "localize",
    "logical_to_spec",
    "make_mesh",
    "mesh_shape",
    "named_sharding",
    "process_mesh",
    "process_share",
    "shard_module",
    "state_shardings",
    "use_rules",
]
