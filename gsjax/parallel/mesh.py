"""The device mesh, built from the config, and multi-host initialisation."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tp")
log = logging.getLogger(__name__)


def mesh_shape(spec: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Resolve a {data, fsdp, tp} spec (one entry may be -1: fill) against `num_devices`."""
    unknown = set(spec) - set(AXES)
    if unknown:
        raise ValueError(f"mesh config has unknown axes {sorted(unknown)}; expected {AXES}")
    sizes = [int(spec.get(a, 1)) for a in AXES]
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1:
        raise ValueError(f"mesh config {dict(spec)}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh config {dict(spec)}: sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if fills:
        if num_devices % known:
            raise ValueError(f"mesh config {dict(spec)}: {num_devices} devices do not divide by {known}")
        sizes[fills[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh config {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"but {num_devices} are available"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(spec: Mapping[str, int] | None = None, devices: list | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tp), all Auto (the compiler propagates shardings)."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(spec or {"data": -1}, len(devices))
    grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def initialize_distributed() -> bool:
    """Start jax.distributed when this is one process of several; a no-op on one host.

    Multi-host is detected from the coordinator variables that launchers set
    (JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES / JAX_PROCESS_ID: launch/gpu_hosts.sh), or a
    Cloud TPU slice (GSJAX_DISTRIBUTED=auto, which launch/tpu_vm.sh sets, or TPU_WORKER_HOSTNAMES
    with more than one host). Returns True when it initialised.
    """
    coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if coordinator:
        # CPU processes (tests, simulated devices) need a collectives backend; GPUs and TPUs
        # bring their own and ignore this setting.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif os.environ.get("GSJAX_DISTRIBUTED") == "auto" or len([h for h in tpu_hosts.split(",") if h]) > 1:
        jax.distributed.initialize()  # Cloud TPU: jax finds the slice's workers itself
    else:
        return False
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return True


def process_mesh(mesh: Mesh, process: int | None = None) -> Mesh:
    """The block of `mesh` on one process's devices (this process's by default), with the same
    axes; the whole mesh when all its devices are that process's. Each process samples on its
    block, asynchronously from the others; the mesh must give each process a contiguous block (as
    `make_mesh` does, devices being ordered by process)."""
    process = jax.process_index() if process is None else process
    grid = mesh.devices
    mine = np.vectorize(lambda d: d.process_index == process)(grid)
    if mine.all():
        return mesh
    index = np.nonzero(mine)
    block = tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)
    if not mine[block].all() or mine.sum() != mine[block].size:
        raise ValueError(f"mesh {dict(mesh.shape)} does not give process {process} a contiguous block "
                         "of devices; put tp within a host and data/fsdp across hosts")
    return Mesh(grid[block], mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
