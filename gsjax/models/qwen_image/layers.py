"""Building blocks shared by the Qwen-Image transformer and VAE, and the mapping of their
parameters onto diffusers' tensor names.

Every parameter is an `nnx.Param` with logical `axes`; those that diffusers stores in another
layout also carry `hf_layout` ("linear": torch [out, in] vs ours [in, out]; "conv": torch
[out, in, *kernel] vs ours [*kernel, in, out]) and, where the torch tensor has extra singleton
dimensions, `hf_shape`. `diffusers_layout` walks a module's state and turns that metadata into
the `TensorMap`s that `hf_io` reads and writes, so no model carries a hand-written name table.

Parameters are read through `compute_value`: on a mesh, a parameter stored sharded over the axes
that also shard the activations' batch (FSDP: `embed` over `fsdp`) is all-gathered over those axes
before use, instead of leaving that choice to XLA, whose SPMD partitioner (jax 0.10.2) can return
wrong rows for such a matmul (docs/qwen_image.md, "Sharding and an XLA partitioner bug").
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gsjax.models.hf_io import TensorMap
from gsjax.parallel import compute_value


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype, init: str = "normal",
          scale: float = 0.02, **meta) -> nnx.Param:
    if init == "normal":
        value = scale * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        value = jnp.zeros(shape, jnp.float32)
    return nnx.Param(value.astype(dtype), axes=axes, **meta)


class Linear(nnx.Module):
    """y = x @ weight + bias, weight stored [in, out] with logical `axes` (in, out)."""

    def __init__(self, din: int, dout: int, axes: tuple[str, str], dtype, *, rngs: nnx.Rngs, bias: bool = True):
        self.weight = param(rngs, (din, dout), axes, dtype, scale=din**-0.5, hf_layout="linear")
        self.bias = param(rngs, (dout,), (axes[1],), dtype, "zeros") if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...i,io->...o", x, compute_value(self.weight).astype(x.dtype))
        return y if self.bias is None else y + compute_value(self.bias).astype(x.dtype)


class RMSNorm(nnx.Module):
    """RMS norm over the last axis with a learned weight (diffusers' RMSNorm)."""

    def __init__(self, dim: int, axis_name: str, dtype, eps: float = 1e-6, *, rngs: nnx.Rngs):
        self.eps = eps
        self.weight = param(rngs, (dim,), (axis_name,), dtype, "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return x32.astype(x.dtype) * compute_value(self.weight).astype(x.dtype)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm over the last axis without affine parameters, computed in fp32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


# ----------------------------------------------------------------------------- diffusers names


def _to_ours(layout: str | None, hf_shape: tuple[int, ...], our_shape: tuple[int, ...]):
    if layout == "linear":
        return lambda w: np.ascontiguousarray(w.T)
    if layout == "conv":  # [out, in, *k] -> [*k, in, out]
        return lambda w: np.ascontiguousarray(w.transpose(*range(2, w.ndim), 1, 0))
    return lambda w: w.reshape(our_shape)


def _to_hf(layout: str | None, hf_shape: tuple[int, ...]):
    if layout == "linear":
        return lambda w: np.ascontiguousarray(w.T)
    if layout == "conv":  # [*k, in, out] -> [out, in, *k]
        return lambda w: np.ascontiguousarray(w.transpose(w.ndim - 1, w.ndim - 2, *range(w.ndim - 2)))
    return lambda w: w.reshape(hf_shape)


def _hf_shape(layout: str | None, shape: tuple[int, ...], meta: dict) -> tuple[int, ...]:
    if "hf_shape" in meta:
        return tuple(meta["hf_shape"])
    if layout == "linear":
        return (shape[1], shape[0])
    if layout == "conv":
        return (shape[-1], shape[-2], *shape[:-2])
    return tuple(shape)


def diffusers_layout(module: nnx.Module, renames: Sequence[tuple[str, str]] = ()) -> list[TensorMap]:
    """One TensorMap per parameter of `module` (an abstract one from nnx.eval_shape is enough).

    The diffusers name is the state path joined with dots, after the `renames` (substring
    replacements on the dotted path, applied in order) for modules whose torch names have
    positions in an nn.Sequential ("img_mod.1.") that an attribute name cannot carry.
    """
    maps = []
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        name = "." + ".".join(str(p) for p in path)
        for old, new in renames:
            name = name.replace(old, new)
        meta = var.get_metadata()
        layout = meta.get("hf_layout")
        shape = tuple(var.shape)
        hf_shape = _hf_shape(layout, shape, meta)
        maps.append(TensorMap(name[1:], tuple(path), hf_shape, _to_ours(layout, hf_shape, shape), _to_hf(layout, hf_shape)))
    return maps
