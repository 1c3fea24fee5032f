"""Placing NNX state on a mesh by the logical axes stored in each variable's metadata."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gsjax.parallel.rules import logical_to_spec


def _sharding(mesh: Mesh, leaf: Any) -> NamedSharding:
    axes = leaf.get_metadata().get("axes") if isinstance(leaf, nnx.Variable) else None
    if axes is None:  # scalars such as an optimizer's step count: replicated
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, logical_to_spec(axes, leaf.shape, dict(mesh.shape)))


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """A pytree of NamedShardings matching `state` (an nnx.State of variables)."""
    return jax.tree.map(lambda v: _sharding(mesh, v), state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_module(module: nnx.Module, mesh: Mesh) -> None:
    """Move every variable of `module` (a model or an nnx.Optimizer) onto `mesh`, in place."""
    state = nnx.state(module)
    shardings = state_shardings(state, mesh)
    nnx.update(module, jax.device_put(state, shardings))
