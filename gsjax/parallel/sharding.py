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
    """NamedShardings for `state` (an nnx.State of variables), in the same pytree structure: each
    variable holds its sharding in place of its value (usable as jit's in/out_shardings and with
    device_put or jax.tree.map beside the state)."""
    return jax.tree.map(lambda v: v.replace(_sharding(mesh, v)), state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_module(module: nnx.Module, mesh: Mesh) -> None:
    """Move every variable of `module` (a model or an nnx.Optimizer) onto `mesh`, in place."""
    state = nnx.state(module)
    shardings = state_shardings(state, mesh)
    nnx.update(module, jax.device_put(state, shardings))


def localize(x: jax.Array, sharding: NamedSharding) -> jax.Array:
    """This process's part of a global array `x` as an array on `sharding` (a mesh of this
    process's devices), without moving data: `x` must be sharded so that the process's devices
    hold all of it (replicated across processes) in `sharding`'s layout."""
    if x.is_fully_addressable:
        return jax.device_put(x, sharding)
    shards = {s.device: s.data for s in x.addressable_shards}
    missing = [d for d in sharding.addressable_devices if d not in shards]
    if missing:
        raise ValueError(f"array of shape {x.shape} has no shard on {missing[0]} of this process")
    arrays = [shards[d] for d in sharding.addressable_devices]
    return jax.make_array_from_single_device_arrays(x.shape, sharding, arrays)
