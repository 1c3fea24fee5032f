"""Logical axis names and the rules that map them onto mesh axes.

Every parameter and activation in gsjax carries logical axis names (``embed``, ``mlp``,
``act_batch``...). Which mesh axis (``data``, ``fsdp``, ``tp``) each name lands on is decided here,
from the config, never in model code. A dimension whose size does not divide evenly by its mesh
axes is left replicated rather than failing, so one model definition runs on any mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes]

# Parameters shard their `embed` dimension over fsdp and their heads / mlp / vocab over tp;
# activations shard the batch over data and fsdp and their heads / mlp / vocab over tp.
DEFAULT_RULES: dict[str, MeshAxes] = {
    # parameters
    "vocab": "tp",
    "embed": "fsdp",
    "q_heads": "tp",
    "kv_heads": "tp",
    "head_dim": None,
    "mlp": "tp",
    "norm": None,
    "layers": None,  # the stacked axis of scanned layers (parameters and the KV cache)
    # Qwen-Image: AdaLN modulation outputs (6 x embed per block: a large share of the 20B weights)
    # and the out side of square embed->embed layers go over tp; small inputs stay replicated.
    "dit_mod": "tp",
    "embed_out": "tp",
    "latent": None,
    "text_embed": None,
    "time_freq": None,
    # VAE convolutions (about 0.1B parameters): replicated.
    "conv_t": None,
    "conv_h": None,
    "conv_w": None,
    "conv_in": None,
    "conv_out": None,
    # Qwen3-VL vision tower (0.58B parameters in Qwen3-VL-8B): replicated.
    "vit_embed": None,
    "vit_heads": None,
    "vit_head_dim": None,
    "vit_qkv": None,
    "vit_mlp": None,
    "vit_patch": None,
    "vit_pos": None,
    "vit_merge": None,
    "vit_merge_mlp": None,
    # activations
    "act_batch": ("data", "fsdp"),
    "act_len": None,
    "act_embed": None,
    "act_heads": "tp",
    "act_kv_heads": "tp",
    "act_head_dim": None,
    "act_mlp": "tp",
    "act_vocab": "tp",
    "act_cache_len": None,
    # The vision tower's patches (all images of a call or a micro-batch in one sequence), split
    # like the rows: each device runs the tower on its share (attention gathers keys and values),
    # and the learner's batch brings each process's images on its own devices.
    "act_patches": ("data", "fsdp"),
}

# The sampler's placement of parameters: whole on every data / fsdp shard and split over tp only,
# so a decode step gathers no weights (the learner's FSDP sharding would gather them all per token).
SAMPLER_RULES: dict[str, MeshAxes] = {"embed": None}

_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar("gsjax_rules", default=DEFAULT_RULES)


@contextlib.contextmanager
def use_rules(rules: Rules) -> Iterator[None]:
    """Use `rules` (logical name -> mesh axes) for everything traced inside the block."""
    token = _RULES.set({**DEFAULT_RULES, **rules})
    try:
        yield
    finally:
        _RULES.reset(token)


def current_rules() -> Rules:
    return _RULES.get()


def _axis_size(mesh_shape: Mapping[str, int], axes: MeshAxes) -> int:
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else axes
    size = 1
    for name in names:
        size *= mesh_shape.get(name, 1)
    return size


def logical_to_spec(
    logical: Sequence[str | None],
    shape: Sequence[int],
    mesh_shape: Mapping[str, int],
    rules: Rules | None = None,
) -> PartitionSpec:
    """PartitionSpec for an array of `shape` whose dimensions carry the `logical` names.

    A mesh axis is used at most once per array; a dimension that its mesh axes do not divide is
    replicated.
    """
    rules = current_rules() if rules is None else rules
    if len(logical) != len(shape):
        raise ValueError(f"logical axes {tuple(logical)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for name, size in zip(logical, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(rules)}")
        axes = rules[name]
        names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        names = tuple(a for a in names if a in mesh_shape and mesh_shape[a] > 1 and a not in used)
        if not names or size % _axis_size(mesh_shape, names) != 0:
            spec.append(None)
            continue
        used.update(names)
        spec.append(names[0] if len(names) == 1 else names)
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, logical: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical, shape, dict(mesh.shape)))


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names against the mesh set with `jax.set_mesh`; a no-op
    when no mesh is set (single device, or code run outside a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    spec = logical_to_spec(logical, x.shape, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)


def _mesh_axes(entry: MeshAxes) -> tuple[str, ...]:
    return () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))


def compute_value(variable) -> jax.Array:
    """The value of a parameter (an nnx.Variable with `axes` metadata) laid out for use against
    batch-sharded activations.

    Under a mesh (`jax.set_mesh`), every dimension of the parameter that its logical axes shard
    over a mesh axis of `act_batch` (data, fsdp: FSDP storage) is all-gathered over that axis, and
    its other mesh axes (tp) are kept: FSDP's gather before use, the layout a matmul needs, which
    XLA would otherwise pick itself. Picking it here matters: when the activations are no larger
    than the weight shard, XLA's SPMD partitioner moves the activations instead and, on meshes with
    data > 1 and fsdp == tp > 1 such as (2, 2, 2), returns the batch shards of (data, fsdp) = (0, 1)
    and (1, 0) swapped (jax 0.10.2; docs/qwen_image.md). A no-op without a mesh, or when no batch
    axis shards the parameter. Inside a scan over stacked layers, a layer's slice still carries the
    stack's leading `layers` name; it is dropped here.
    """
    value = variable[...]
    mesh = jax.sharding.get_abstract_mesh()
    axes = variable.get_metadata().get("axes")
    if mesh.empty or mesh.size == 1 or axes is None:
        return value
    axes = tuple(axes)[len(axes) - value.ndim:]
    batch = set(_mesh_axes(current_rules().get("act_batch")))
    stored = [_mesh_axes(e) for e in logical_to_spec(axes, value.shape, dict(mesh.shape))]
    kept = [tuple(a for a in e if a not in batch) for e in stored]
    if kept == stored:
        return value
    spec = PartitionSpec(*(None if not e else e[0] if len(e) == 1 else e for e in kept))
    return jax.lax.with_sharding_constraint(value, spec)
