"""The Qwen2.5-VL vision tower in Flax NNX: image patches in, decoder-width image tokens out.

The tower, as transformers' `Qwen2_5_VisionTransformerPretrainedModel` (5.23) computes it:
1. patch embedding: each row of the processor's `pixel_values` (one patch of
   in_channels x temporal_patch_size x patch_size x patch_size values) times one matrix (HF's
   bias-free Conv3d, whose stride equals its kernel); no learned position table;
2. the patches are reordered window by window: the merge units (spatial_merge_size**2 patches, one
   output token) of each image are grouped into windows of `window_size // spatial_merge_size //
   patch_size` units a side, window after window in raster order (HF's `get_window_index`);
3. `depth` pre-norm blocks (RMSNorm, bidirectional attention with a 2-D rotary embedding of each
   patch's (row, col), RMSNorm, SwiGLU MLP with biases); blocks `fullatt_block_indexes` attend
   within one frame of one image, every other block only within its window;
4. a merger: RMSNorm of each patch, every merge unit concatenated and mapped by a 2-layer MLP
   (exact GELU) to the decoder's width; then the tokens are put back in the processor's order.

The window order only makes each window a contiguous run of patches (what HF's variable-length
kernels need, and what a block-sparse kernel would skip blocks by); with the masked attention here
the result is the same either way, but the order is kept so the two agree step by step.

Host / jit split: everything that depends on the images' grid sizes (the window permutation and
its inverse, rotary ids, image and window segments) is computed on the host by `vision_layout`
with NumPy, into arrays of a fixed length `pad_to`. The jitted tower sees only fixed-shape arrays,
so images of any size that fit one bucket share one compiled program; padding patches sit at the
end with segment 0 (they attend to nothing and nothing attends to them) and their outputs are to be
dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gsjax.models.layout import CheckpointError, TensorMap, same, transposed
from gsjax.models.qwen3 import make_param
# The pieces Qwen2.5-VL shares with Qwen3-VL's tower: the qkv attention with 2-D rotary angles
# (same frequencies, same rotate-half layout), dense layers, and the processor's patch order.
from gsjax.models.qwen3_vl_vision import (Attention, Dense, TowerSizes, _block_order_coords, _grids,
                                          rotary_angles)
from gsjax.parallel import compute_value, constrain

# The block MLP activations gsjax implements, by their transformers name. The merger always uses
# exact (erf) GELU, whatever the config says.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"silu": jax.nn.silu}


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class VisionConfig(TowerSizes):
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int  # the decoder's hidden size
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    window_size: int = 112  # in pixels: window_size // (spatial_merge_size * patch_size) tokens a side
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    hidden_act: str = "silu"
    rope_theta: float = 10_000.0
    tokens_per_second: int = 4  # videos only (kept for the config round trip)
    rms_norm_eps: float = 1e-6  # fixed in transformers, not a config field there
    dtype: str = "float32"  # activations
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "fullatt_block_indexes", tuple(int(i) for i in self.fullatt_block_indexes))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim={self.head_dim} must be a multiple of 4 (rows and columns each rotate half)")
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad or len(set(self.fullatt_block_indexes)) != len(self.fullatt_block_indexes):
            raise ValueError(f"fullatt_block_indexes={self.fullatt_block_indexes} must be distinct blocks in "
                             f"[0, {self.depth})")
        if self.window_tokens < 1:
            raise ValueError(f"window_size={self.window_size} must be at least spatial_merge_size * patch_size = "
                             f"{self.spatial_merge_size * self.patch_size} pixels (one token)")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r}; expected one of {sorted(ACTIVATIONS)}")

    @property
    def window_tokens(self) -> int:
        """A window's side in merged tokens (HF's vit_merger_window_size)."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    def num_params(self) -> int:
        e, m, u, o = self.hidden_size, self.intermediate_size, self.merged_size, self.out_hidden_size
        block = 2 * e + (3 * e * e + 3 * e) + (e * e + e) + 2 * (e * m + m) + (m * e + e)
        merger = e + (u * u + u) + (u * o + o)
        return self.patch_dim * e + self.depth * block + merger

    @classmethod
    def from_hf(cls, d: dict[str, Any], source: str = "config.json", **overrides: Any) -> VisionConfig:
        """The tower a Hugging Face Qwen2.5-VL `vision_config` describes (a whole Qwen2.5-VL
        config also works: its `vision_config` is read). Fields transformers defaults are
        defaulted the same way; `overrides` set other fields (dtype, param_dtype). A missing or
        invalid field raises CheckpointError (a ValueError) naming it."""
        if isinstance(d.get("vision_config"), dict):
            d, source = d["vision_config"], f"{source}: vision_config"

        def integer(key: str, default: int | None = None) -> int:
            if key not in d and default is None:
                raise CheckpointError(f"{source}: required field {key!r} is missing")
            value = d.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise CheckpointError(f"{source}: field {key!r} is {value!r}; expected a positive integer")
            return value

        rope = d.get("rope_parameters") or {}
        if rope.get("rope_type", "axial") != "axial":
            raise CheckpointError(f"{source}: rope_parameters.rope_type is {rope['rope_type']!r}; expected 'axial'")
        full = d.get("fullatt_block_indexes", list(cls.fullatt_block_indexes))
        if not isinstance(full, (list, tuple)) or not all(isinstance(i, int) for i in full):
            raise CheckpointError(f"{source}: field 'fullatt_block_indexes' is {full!r}; expected a list of ints")
        fields = dict(
            depth=integer("depth"),
            hidden_size=integer("hidden_size"),
            intermediate_size=integer("intermediate_size"),
            num_heads=integer("num_heads"),
            out_hidden_size=integer("out_hidden_size"),
            fullatt_block_indexes=tuple(full),
            window_size=integer("window_size", cls.window_size),
            # Early Qwen2.5-VL configs name the input channels "in_chans".
            in_channels=integer("in_channels", d.get("in_chans", cls.in_channels)),
            patch_size=integer("patch_size", cls.patch_size),
            temporal_patch_size=integer("temporal_patch_size", cls.temporal_patch_size),
            spatial_merge_size=integer("spatial_merge_size", cls.spatial_merge_size),
            hidden_act=d.get("hidden_act", cls.hidden_act),
            rope_theta=float(rope.get("rope_theta", cls.rope_theta)),
            tokens_per_second=integer("tokens_per_second", cls.tokens_per_second),
        )
        fields.update(overrides)
        try:
            return cls(**fields)
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from e

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face `vision_config` dict (what `transformers.Qwen2_5_VLVisionConfig` takes)."""
        return {
            "model_type": "qwen2_5_vl_vision",
            "depth": self.depth,
            "hidden_size": self.hidden_size,
            "hidden_act": self.hidden_act,
            "intermediate_size": self.intermediate_size,
            "num_heads": self.num_heads,
            "in_channels": self.in_channels,
            "patch_size": self.patch_size,
            "spatial_merge_size": self.spatial_merge_size,
            "temporal_patch_size": self.temporal_patch_size,
            "tokens_per_second": self.tokens_per_second,
            "window_size": self.window_size,
            "out_hidden_size": self.out_hidden_size,
            "fullatt_block_indexes": list(self.fullatt_block_indexes),
            "initializer_range": 0.02,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "axial"},
        }


def tiny_vision_config(**overrides: Any) -> VisionConfig:
    """A 3-block tower for tests (block 1 full attention, blocks 0 and 2 in windows of 2x2 tokens,
    i.e. 4x4 patches); patch size 14 as the real processor's."""
    base = dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=24,
                fullatt_block_indexes=(1,), window_size=56, patch_size=14, temporal_patch_size=2,
                spatial_merge_size=2)
    return VisionConfig(**{**base, **overrides})


# ----------------------------------------------------------------------------- host-side layout


class VisionLayout(NamedTuple):
    """Per-patch inputs of the tower. Rows are in window order (the order the blocks run in),
    except `window_index` / `reverse_index`, which are per merge unit. Rows past the images'
    patches (up to `pad_to`) are padding: position (0, 0), segment 0 in both segmentations, and
    units that map to themselves."""

    positions: Any  # [P, 2] int32: each patch's (row, col) in its image's grid, the rotary ids
    window_index: Any  # [P / unit] int32: the processor-order unit at each window-order place
    reverse_index: Any  # [P / unit] int32: its inverse (window-order place of each processor-order unit)
    image_segments: Any  # [P] int32: full-attention segment, one per frame of each image from 1; 0 = padding
    window_segments: Any  # [P] int32: window-attention segment, one per window from 1; 0 = padding
    tokens_per_image: Any = None  # [n] int32 merged tokens of each image (host only; None on the device)

    def on_device(self) -> VisionLayout:
        """The per-patch arrays as jax arrays, without `tokens_per_image`, whose length varies with
        the number of images: what a jitted tower takes, with the same shapes for every batch."""
        return VisionLayout(*(jnp.asarray(a) for a in self[:5]), tokens_per_image=None)


def _window_order(t: int, lh: int, lw: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """HF's `get_window_index` for one image of t x lh x lw merge units: (the units in window
    order, the number of units in each non-empty window). Its padding of the unit grid to whole
    windows (a whole extra row / column of windows when the side already divides, which only adds
    empty windows) is kept as it is."""
    pad_h, pad_w = side - lh % side, side - lw % side
    grid = np.full((t, lh + pad_h, lw + pad_w), -1, np.int64)
    grid[:, :lh, :lw] = np.arange(t * lh * lw).reshape(t, lh, lw)
    nh, nw = (lh + pad_h) // side, (lw + pad_w) // side
    windows = grid.reshape(t, nh, side, nw, side).transpose(0, 1, 3, 2, 4).reshape(t * nh * nw, side * side)
    counts = (windows >= 0).sum(axis=1)
    order = windows.reshape(-1)
    return order[order >= 0], counts[counts > 0]


def vision_layout(
    grid_thw: Sequence[Sequence[int]] | np.ndarray, cfg: VisionConfig, pad_to: int | None = None
) -> VisionLayout:
    """The tower's per-patch inputs for images with patch grids `grid_thw` ([n, 3]: t, h, w),
    padded to `pad_to` patches (a multiple of spatial_merge_size**2; None: no padding).

    The window permutation, rotary ids and both segmentations follow transformers' Qwen2.5-VL
    exactly (`get_window_index`, `get_vision_position_ids`, `cu_seqlens` / `cu_window_seqlens`);
    bucketing by `pad_to` gives every batch of a bucket the same shapes (one compiled tower).
    """
    merge, unit = cfg.spatial_merge_size, cfg.merge_unit
    grids = _grids(grid_thw, merge)
    total = int(np.prod(grids, axis=1).sum())
    if pad_to is None:
        pad_to = total
    if pad_to % unit:
        raise ValueError(f"pad_to={pad_to} must be a multiple of spatial_merge_size**2={unit}")
    if total > pad_to:
        raise ValueError(f"pad_to={pad_to} is smaller than the images' {total} patches (grid_thw={grids.tolist()})")

    units = pad_to // unit
    window_index = np.arange(units, dtype=np.int64)  # padding units stay in place
    coords = np.zeros((pad_to, 2), np.int32)  # processor order
    frames = np.zeros((pad_to,), np.int32)  # processor order
    window_segments = np.zeros((pad_to,), np.int32)  # window order
    start, frame, window = 0, 0, 0
    for t, h, w in grids.tolist():
        n = t * h * w
        rows, cols = _block_order_coords(t, h, w, merge)
        coords[start:start + n] = np.stack([rows, cols], axis=-1)
        frames[start:start + n] = frame + 1 + np.arange(n) // (h * w)
        order, counts = _window_order(t, h // merge, w // merge, cfg.window_tokens)
        u0 = start // unit
        window_index[u0:u0 + n // unit] = order + u0
        window_segments[start:start + n] = np.repeat(window + 1 + np.arange(len(counts)), counts * unit)
        start, frame, window = start + n, frame + t, window + len(counts)

    def permuted(a: np.ndarray) -> np.ndarray:  # HF's permute_input_for_window_attn
        return a.reshape(units, unit, *a.shape[1:])[window_index].reshape(a.shape)

    tokens = (np.prod(grids, axis=1) // unit).astype(np.int32)
    return VisionLayout(permuted(coords), window_index.astype(np.int32), np.argsort(window_index).astype(np.int32),
                        permuted(frames), window_segments, tokens)


# ----------------------------------------------------------------------------- the tower


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis, as HF's Qwen2_5_VLRMSNorm: normalised in fp32, cast back, scaled."""

    def __init__(self, dim: int, axis: str, eps: float, dtype, *, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = make_param(rngs, (dim,), (axis,), dtype, "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return compute_value(self.scale).astype(x.dtype) * y.astype(x.dtype)


class MLP(nnx.Module):
    """down(act(gate(x)) * up(x)), every projection with a bias."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        pd, e, m = cfg.jnp_param_dtype, cfg.hidden_size, cfg.intermediate_size
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.gate_proj = Dense(e, m, ("vit_embed", "vit_mlp"), pd, rngs=rngs)
        self.up_proj = Dense(e, m, ("vit_embed", "vit_mlp"), pd, rngs=rngs)
        self.down_proj = Dense(m, e, ("vit_mlp", "vit_embed"), pd, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = constrain(self.act(self.gate_proj(x)) * self.up_proj(x), ("act_patches", "act_mlp"))
        return self.down_proj(h)


class Block(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        pd = cfg.jnp_param_dtype
        self.norm1 = RMSNorm(cfg.hidden_size, "vit_embed", cfg.rms_norm_eps, pd, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)  # Qwen3-VL's: qkv and proj with biases, 2-D rotary
        self.norm2 = RMSNorm(cfg.hidden_size, "vit_embed", cfg.rms_norm_eps, pd, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, angles: jax.Array, segment_ids: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x), angles, segment_ids)
        x = x + self.mlp(self.norm2(x))
        return constrain(x, ("act_patches", "act_embed"))


class Merger(nnx.Module):
    """Each patch normalised, merge_unit consecutive patches concatenated, then a 2-layer MLP
    (exact GELU) to the decoder's width."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        pd, u = cfg.jnp_param_dtype, cfg.merged_size
        self.merge_unit = cfg.merge_unit
        self.ln_q = RMSNorm(cfg.hidden_size, "vit_embed", cfg.rms_norm_eps, pd, rngs=rngs)
        self.fc1 = Dense(u, u, ("vit_merge", "vit_merge_mlp"), pd, rngs=rngs)
        self.fc2 = Dense(u, cfg.out_hidden_size, ("vit_merge_mlp", "embed"), pd, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.ln_q(x)
        x = x.reshape(x.shape[0] // self.merge_unit, -1)
        h = jax.nn.gelu(self.fc1(x), approximate=False)
        return constrain(self.fc2(h), ("act_patches", "act_embed"))


class VisionTower(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = cfg.jnp_param_dtype
        self.patch_embed = make_param(rngs, (cfg.patch_dim, cfg.hidden_size), ("vit_patch", "vit_embed"), pd)
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.merger = Merger(cfg, rngs=rngs)

    def _check(self, patches: jax.Array, layout: VisionLayout) -> None:
        cfg = self.cfg
        p = patches.shape[0]
        if patches.ndim != 2 or patches.shape[1] != cfg.patch_dim:
            raise ValueError(f"patches have shape {patches.shape}; expected [patches, {cfg.patch_dim}]")
        if p % cfg.merge_unit:
            raise ValueError(f"{p} patches: expected a multiple of spatial_merge_size**2={cfg.merge_unit}")
        rows = {"positions": (p, 2), "window_index": (p // cfg.merge_unit,),
                "reverse_index": (p // cfg.merge_unit,), "image_segments": (p,), "window_segments": (p,)}
        for name, shape in rows.items():
            if tuple(getattr(layout, name).shape) != shape:
                raise ValueError(f"layout.{name} has shape {getattr(layout, name).shape}; expected {shape} "
                                 f"for {p} patches")

    def __call__(self, patches: jax.Array, layout: VisionLayout) -> jax.Array:
        """patches [P, patch_dim] (pixel_values rows, processor order) and their `vision_layout`
        -> image tokens [P / merge_unit, out_hidden_size] in the processor's order. Tokens of
        padding patches are meaningless and are to be dropped."""
        self._check(patches, layout)
        cfg = self.cfg
        p, unit = patches.shape[0], cfg.merge_unit
        x = constrain(patches.astype(cfg.jnp_dtype), ("act_patches", None))
        x = x @ compute_value(self.patch_embed).astype(x.dtype)
        x = jnp.take(x.reshape(p // unit, unit, -1), layout.window_index, axis=0).reshape(p, -1)
        x = constrain(x, ("act_patches", "act_embed"))
        angles = rotary_angles(layout.positions, cfg.head_dim, cfg.rope_theta)
        for i, block in enumerate(self.blocks):
            segments = layout.image_segments if i in cfg.fullatt_block_indexes else layout.window_segments
            x = block(x, angles, segments)
        return jnp.take(self.merger(x), layout.reverse_index, axis=0)


# ----------------------------------------------------------------------------- HF tensor names


def vision_tensor_layout(cfg: VisionConfig, prefix: str = "model.visual.", at: tuple[Any, ...] = ()) -> list[TensorMap]:
    """Where each tensor of a Qwen2.5-VL checkpoint's vision tower (names `prefix` + HF's:
    "model.visual." as transformers 5 names them in memory, "visual." as it saves them) lives in
    a VisionTower: the NNX state path (under `at`) and the conversions between HF's shape and ours."""
    e, h, d, c = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.in_channels
    t, p, m, u, o = cfg.temporal_patch_size, cfg.patch_size, cfg.intermediate_size, cfg.merged_size, cfg.out_hidden_size
    conv = (lambda w: np.ascontiguousarray(w.reshape(e, -1).T),  # [e, C, T, p, p] <-> [C*T*p*p, e]
            lambda w: np.ascontiguousarray(w.T.reshape(e, c, t, p, p)))
    qkv = (lambda w: np.ascontiguousarray(w.reshape(3, h, d, e).transpose(3, 0, 1, 2)),  # [3e, e] <-> [e, 3, h, d]
           lambda w: np.ascontiguousarray(w.transpose(1, 2, 3, 0).reshape(3 * e, e)))
    qkv_bias = (lambda b: b.reshape(3, h, d), lambda b: b.reshape(3 * e))
    proj = (lambda w: np.ascontiguousarray(w.reshape(e, h, d).transpose(1, 2, 0)),  # [e, h*d] <-> [h, d, e]
            lambda w: np.ascontiguousarray(w.transpose(2, 0, 1).reshape(e, h * d)))

    def tm(name: str, path: tuple[Any, ...], shape: tuple[int, ...], convert=(same, same)) -> TensorMap:
        return TensorMap(prefix + name, at + path, shape, *convert)

    def dense(name: str, path: tuple[Any, ...], din: int, dout: int) -> list[TensorMap]:
        return [tm(f"{name}.weight", path + ("weight",), (dout, din), (transposed, transposed)),
                tm(f"{name}.bias", path + ("bias",), (dout,))]

    maps = [tm("patch_embed.proj.weight", ("patch_embed",), (e, c, t, p, p), conv)]
    for i in range(cfg.depth):
        b, at_b = f"blocks.{i}.", ("blocks", i)
        maps += [tm(b + "norm1.weight", at_b + ("norm1", "scale"), (e,)),
                 tm(b + "norm2.weight", at_b + ("norm2", "scale"), (e,)),
                 tm(b + "attn.qkv.weight", at_b + ("attn", "qkv"), (3 * e, e), qkv),
                 tm(b + "attn.qkv.bias", at_b + ("attn", "qkv_bias"), (3 * e,), qkv_bias),
                 tm(b + "attn.proj.weight", at_b + ("attn", "proj"), (e, e), proj),
                 tm(b + "attn.proj.bias", at_b + ("attn", "proj_bias"), (e,))]
        for name, din, dout in (("gate_proj", e, m), ("up_proj", e, m), ("down_proj", m, e)):
            maps += dense(b + "mlp." + name, at_b + ("mlp", name), din, dout)
    # The merger's MLP is a torch nn.Sequential: Linear (0), GELU (1), Linear (2).
    maps += [tm("merger.ln_q.weight", ("merger", "ln_q", "scale"), (e,))]
    maps += dense("merger.mlp.0", ("merger", "fc1"), u, u) + dense("merger.mlp.2", ("merger", "fc2"), u, o)
    return maps
