"""The Qwen3-VL vision tower in Flax NNX: image patches in, decoder-width image tokens out.

The tower, as transformers' `Qwen3VLVisionModel` computes it:
1. patch embedding: each row of the processor's `pixel_values` (one patch of
   in_channels x temporal_patch_size x patch_size x patch_size values) times one matrix (HF's
   Conv3d, whose stride equals its kernel), plus a learned position embedding resampled
   bilinearly from a square table to the image's patch grid;
2. `depth` pre-norm transformer blocks (LayerNorm, bidirectional attention with a 2-D rotary
   embedding of each patch's (row, col), LayerNorm, GELU MLP); attention stays within one frame
   of one image (`gsjax.models.attention.segment_attention`, "plain" or "blocked" by the config's
   `attention`);
3. a merger: LayerNorm, then every spatial_merge_size**2 consecutive patches (one 2x2 block of the
   grid: the processor emits patches block by block) concatenated and mapped by a 2-layer MLP to
   the decoder's width; the outputs of blocks `deepstack_visual_indexes` go through mergers of
   their own (normalised after the concatenation) and are added to the decoder's early layers.

Host / jit split: everything that depends on the images' grid sizes (rotary ids, interpolation
taps and weights, attention segments) is computed on the host by `vision_layout` with NumPy, into
arrays of a fixed length `pad_to`. The jitted tower sees only fixed-shape arrays, so images of any
size that fit one bucket share one compiled program; padding patches have segment 0 (they attend
to nothing and nothing attends to them) and their outputs are to be dropped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gsjax.models.attention import SEGMENT_IMPLEMENTATIONS, segment_attention
from gsjax.models.layout import CheckpointError, TensorMap, same, transposed
from gsjax.models.qwen3 import REMAT_POLICIES, make_param
from gsjax.parallel import compute_value, constrain

# The MLP activations gsjax implements, by their transformers name. The mergers always use exact
# (erf) GELU, whatever the config says.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True, kw_only=True)
class TowerSizes:
    """Sizes both Qwen vision towers derive from their config fields (hidden_size, num_heads,
    in_channels, temporal_patch_size, patch_size, spatial_merge_size, dtype, param_dtype), and how
    both run their attention (not part of a checkpoint)."""

    # `gsjax.models.attention.segment_attention`: "plain" holds [heads, P, P] scores (tiny towers);
    # "blocked" is flash attention in key/query blocks of `attention_block` patches, O(P x block).
    attention: str = "plain"
    attention_block: int = 512

    def __post_init__(self) -> None:
        if self.attention not in SEGMENT_IMPLEMENTATIONS:
            raise ValueError(f"attention={self.attention!r}; expected one of {SEGMENT_IMPLEMENTATIONS}")
        if self.attention_block <= 0:
            raise ValueError(f"attention_block={self.attention_block} must be positive")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values per patch: a row of the processor's pixel_values."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        """Patches per output token."""
        return self.spatial_merge_size**2

    @property
    def merged_size(self) -> int:
        """Width of a merged token before the merger's MLP."""
        return self.hidden_size * self.merge_unit

    @property
    def jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)


@dataclasses.dataclass(frozen=True)
class VisionConfig(TowerSizes):
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int  # the decoder's hidden size
    num_position_embeddings: int  # a square table: side * side learned position embeddings
    deepstack_visual_indexes: tuple[int, ...] = ()
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10_000.0
    layer_norm_eps: float = 1e-6  # fixed in transformers, not a config field there
    dtype: str = "float32"  # activations
    param_dtype: str = "float32"
    # How the blocks run (not part of a checkpoint), as the decoder's layers: what the backward pass
    # keeps of each block (`gsjax.models.qwen3.REMAT_POLICIES`), and `lax.scan` over the blocks
    # between deepstack taps (their parameters stacked at trace time) instead of a Python loop, so
    # a program compiles one block per run of blocks rather than `depth` of them.
    remat: str = "none"
    scan_blocks: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "deepstack_visual_indexes", tuple(int(i) for i in self.deepstack_visual_indexes))
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; expected one of {sorted(REMAT_POLICIES)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim={self.head_dim} must be a multiple of 4 (rows and columns each rotate half)")
        if math.isqrt(self.num_position_embeddings) ** 2 != self.num_position_embeddings:
            raise ValueError(f"num_position_embeddings={self.num_position_embeddings} must be a square")
        bad = [i for i in self.deepstack_visual_indexes if not 0 <= i < self.depth]
        if bad or len(set(self.deepstack_visual_indexes)) != len(self.deepstack_visual_indexes):
            raise ValueError(
                f"deepstack_visual_indexes={self.deepstack_visual_indexes} must be distinct blocks in [0, {self.depth})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r}; expected one of {sorted(ACTIVATIONS)}")

    @property
    def grid_side(self) -> int:
        return math.isqrt(self.num_position_embeddings)

    def num_params(self) -> int:
        e, m, u, o = self.hidden_size, self.intermediate_size, self.merged_size, self.out_hidden_size
        block = 4 * e + (3 * e * e + 3 * e) + (e * e + e) + (e * m + m) + (m * e + e)
        merger_mlp = (u * u + u) + (u * o + o)
        merger = 2 * e + merger_mlp
        deepstack = 2 * u + merger_mlp
        embed = self.patch_dim * e + e + self.num_position_embeddings * e
        return embed + self.depth * block + merger + len(self.deepstack_visual_indexes) * deepstack

    @classmethod
    def from_hf(cls, d: dict[str, Any], source: str = "config.json", **overrides: Any) -> VisionConfig:
        """The tower a Hugging Face `vision_config` describes (a whole Qwen3-VL config also works:
        its `vision_config` is read); `overrides` set other fields (dtype, param_dtype). A missing
        or invalid field raises CheckpointError (a ValueError) naming it."""
        if isinstance(d.get("vision_config"), dict):
            d, source = d["vision_config"], f"{source}: vision_config"

        def need(key: str) -> Any:
            if key not in d:
                raise CheckpointError(f"{source}: required field {key!r} is missing")
            return d[key]

        def integer(key: str) -> int:
            value = need(key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise CheckpointError(f"{source}: field {key!r} is {value!r}; expected a positive integer")
            return value

        rope = d.get("rope_parameters") or {}
        if rope.get("rope_type", "axial") != "axial":
            raise CheckpointError(f"{source}: rope_parameters.rope_type is {rope['rope_type']!r}; expected 'axial'")
        deepstack = need("deepstack_visual_indexes")
        if not isinstance(deepstack, (list, tuple)) or not all(isinstance(i, int) for i in deepstack):
            raise CheckpointError(
                f"{source}: field 'deepstack_visual_indexes' is {deepstack!r}; expected a list of ints"
            )
        fields = dict(
            depth=integer("depth"),
            hidden_size=integer("hidden_size"),
            intermediate_size=integer("intermediate_size"),
            num_heads=integer("num_heads"),
            out_hidden_size=integer("out_hidden_size"),
            num_position_embeddings=integer("num_position_embeddings"),
            deepstack_visual_indexes=tuple(deepstack),
            in_channels=integer("in_channels"),
            patch_size=integer("patch_size"),
            temporal_patch_size=integer("temporal_patch_size"),
            spatial_merge_size=integer("spatial_merge_size"),
            hidden_act=need("hidden_act"),
            rope_theta=float(rope.get("rope_theta", 10_000.0)),
        )
        fields.update(overrides)
        try:
            return cls(**fields)
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from e

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face `vision_config` dict (what `transformers.Qwen3VLVisionConfig` takes)."""
        return {
            "model_type": "qwen3_vl_vision",
            "depth": self.depth,
            "hidden_size": self.hidden_size,
            "hidden_act": self.hidden_act,
            "intermediate_size": self.intermediate_size,
            "num_heads": self.num_heads,
            "in_channels": self.in_channels,
            "patch_size": self.patch_size,
            "spatial_merge_size": self.spatial_merge_size,
            "temporal_patch_size": self.temporal_patch_size,
            "out_hidden_size": self.out_hidden_size,
            "num_position_embeddings": self.num_position_embeddings,
            "deepstack_visual_indexes": list(self.deepstack_visual_indexes),
            "initializer_range": 0.02,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "axial"},
        }


def tiny_vision_config(**overrides: Any) -> VisionConfig:
    """A 3-block tower for tests (about 0.1 M parameters); a 4x4 position table, so a grid other
    than 4x4 exercises the interpolation."""
    base = dict(
        depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=48,
        num_position_embeddings=16, deepstack_visual_indexes=(0, 2), in_channels=3, patch_size=4,
        temporal_patch_size=2, spatial_merge_size=2,
    )
    return VisionConfig(**{**base, **overrides})


# ----------------------------------------------------------------------------- host-side layout


class VisionLayout(NamedTuple):
    """Per-patch inputs of the tower, in the order of the processor's pixel_values rows.

    Rows past the images' patches (up to `pad_to`) are padding: segment 0, position (0, 0), zero
    interpolation weights.
    """

    positions: Any  # [P, 2] int32: each patch's (row, col) in its image's grid, the rotary ids
    pos_index: Any  # [P, 4] int32: rows of the learned position table, bilinear taps
    pos_weight: Any  # [P, 4] float32: the taps' weights
    segment_ids: Any  # [P] int32: attention segment, one per frame of each image from 1 (images: 1..n); 0 = padding
    tokens_per_image: Any = None  # [n] int32 merged tokens of each image (host only; None on the device)

    def on_device(self) -> VisionLayout:
        """The per-patch arrays as jax arrays, without `tokens_per_image`, whose length varies with
        the number of images: what a jitted tower takes, with the same shapes for every batch."""
        return VisionLayout(*(jnp.asarray(a) for a in self[:4]), tokens_per_image=None)


def _grids(grid_thw: Sequence[Sequence[int]] | np.ndarray, merge: int) -> np.ndarray:
    grids = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3) if len(grid_thw) else np.zeros((0, 3), np.int64)
    for i, (t, h, w) in enumerate(grids.tolist()):
        if min(t, h, w) <= 0 or h % merge or w % merge:
            raise ValueError(
                f"grid_thw[{i}] = {(t, h, w)}: expected positive sizes with h and w multiples of "
                f"spatial_merge_size={merge}"
            )
    return grids


def _block_order_coords(t: int, h: int, w: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each patch of a t x h x w grid in the processor's order: frame by frame,
    merge x merge blocks in raster order, raster order inside a block."""
    within = np.arange(t * h * w) % (h * w)
    blocks_w = w // merge
    in_col, in_row = within % merge, (within // merge) % merge
    block = within // (merge * merge)
    return (block // blocks_w) * merge + in_row, (block % blocks_w) * merge + in_col


def _axis_taps(coord: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps (2 per patch) into a `side`-long table for positions 0..size-1 of an axis,
    with the end points of both aligned (align_corners=True) and the upper tap clamped to the
    table. Computed in float32 as transformers does, so the weights agree to the bit."""
    src = coord.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    low = np.floor(src)
    offsets = np.arange(2)
    taps = np.clip(low.astype(np.int64)[:, None] + offsets, 0, side - 1)
    weights = np.clip(1 - np.abs(src[:, None] - low[:, None] - offsets.astype(np.float32)), 0, None)
    return taps, weights.astype(np.float32)


def vision_layout(
    grid_thw: Sequence[Sequence[int]] | np.ndarray, cfg: VisionConfig, pad_to: int | None = None
) -> VisionLayout:
    """The tower's per-patch inputs for images with patch grids `grid_thw` ([n, 3]: t, h, w),
    padded to `pad_to` patches (a multiple of spatial_merge_size**2; None: no padding).

    Rotary ids, position-table taps and segments follow transformers' Qwen3-VL exactly; bucketing
    by `pad_to` gives every batch of a bucket the same shapes (one compiled tower).
    """
    merge, side = cfg.spatial_merge_size, cfg.grid_side
    grids = _grids(grid_thw, merge)
    total = int(np.prod(grids, axis=1).sum())
    if pad_to is None:
        pad_to = total
    if pad_to % cfg.merge_unit:
        raise ValueError(f"pad_to={pad_to} must be a multiple of spatial_merge_size**2={cfg.merge_unit}")
    if total > pad_to:
        raise ValueError(f"pad_to={pad_to} is smaller than the images' {total} patches (grid_thw={grids.tolist()})")

    positions = np.zeros((pad_to, 2), np.int32)
    pos_index = np.zeros((pad_to, 4), np.int32)
    pos_weight = np.zeros((pad_to, 4), np.float32)
    segment_ids = np.zeros((pad_to,), np.int32)
    start, segment = 0, 0
    for t, h, w in grids.tolist():
        n = t * h * w
        rows, cols = _block_order_coords(t, h, w, merge)
        row_taps, row_w = _axis_taps(rows, h, side)
        col_taps, col_w = _axis_taps(cols, w, side)
        at = slice(start, start + n)
        positions[at] = np.stack([rows, cols], axis=-1)
        # The four taps as (top-left, top-right, bottom-left, bottom-right), HF's order.
        pos_index[at] = (row_taps[:, :, None] * side + col_taps[:, None, :]).reshape(n, 4)
        pos_weight[at] = (row_w[:, :, None] * col_w[:, None, :]).reshape(n, 4)
        segment_ids[at] = segment + 1 + np.arange(n) // (h * w)
        start, segment = start + n, segment + t
    tokens = (np.prod(grids, axis=1) // cfg.merge_unit).astype(np.int32)
    return VisionLayout(positions, pos_index, pos_weight, segment_ids, tokens)


# ----------------------------------------------------------------------------- the tower


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with scale and bias, computed in fp32."""

    def __init__(self, dim: int, axis: str, eps: float, dtype, *, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = make_param(rngs, (dim,), (axis,), dtype, "ones")
        self.bias = make_param(rngs, (dim,), (axis,), dtype, "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * compute_value(self.scale).astype(jnp.float32) + compute_value(self.bias).astype(jnp.float32)
        return y.astype(x.dtype)


class Dense(nnx.Module):
    """y = x @ weight + bias; weight stored [in, out] with logical `axes` (in, out)."""

    def __init__(self, din: int, dout: int, axes: tuple[str, str], dtype, *, rngs: nnx.Rngs):
        self.weight = make_param(rngs, (din, dout), axes, dtype)
        self.bias = make_param(rngs, (dout,), (axes[1],), dtype, "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ compute_value(self.weight).astype(x.dtype) + compute_value(self.bias).astype(x.dtype)


def rotary_angles(positions: jax.Array, head_dim: int, theta: float) -> jax.Array:
    """Angles [P, head_dim] of the 2-D rotary embedding: the first half of each rotate-half pair
    turns with the patch's row, the second with its column (frequencies over head_dim / 2)."""
    quarter = head_dim // 4
    inv_freq = 1.0 / (theta ** (jnp.arange(quarter, dtype=jnp.float32) * 2 / (head_dim // 2)))
    freqs = positions.astype(jnp.float32)[:, :, None] * inv_freq  # [P, 2, head_dim/4]
    half = freqs.reshape(positions.shape[0], 2 * quarter)  # rows' then columns' angles
    return jnp.concatenate([half, half], axis=-1)


def apply_rotary(x: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotate-half rotary embedding of x [P, heads, head_dim] by angles [P, head_dim], in fp32."""
    x32 = x.astype(jnp.float32)
    cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]
    x1, x2 = jnp.split(x32, 2, axis=-1)
    return (x32 * cos + jnp.concatenate([-x2, x1], axis=-1) * sin).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        e, h, d, pd = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.jnp_param_dtype
        self.cfg = cfg
        # q, k and v in one weight, as the checkpoint stores them (one tensor, one parameter).
        self.qkv = make_param(rngs, (e, 3, h, d), ("vit_embed", "vit_qkv", "vit_heads", "vit_head_dim"), pd)
        self.qkv_bias = make_param(rngs, (3, h, d), ("vit_qkv", "vit_heads", "vit_head_dim"), pd, "zeros")
        self.proj = make_param(rngs, (h, d, e), ("vit_heads", "vit_head_dim", "vit_embed"), pd)
        self.proj_bias = make_param(rngs, (e,), ("vit_embed",), pd, "zeros")

    def __call__(self, x: jax.Array, angles: jax.Array, segment_ids: jax.Array) -> jax.Array:
        qkv = jnp.einsum("pe,ethd->tphd", x, compute_value(self.qkv).astype(x.dtype))
        qkv = qkv + compute_value(self.qkv_bias).astype(x.dtype)[:, None]
        axes = ("act_patches", "act_heads", "act_head_dim")
        q, k, v = (constrain(y, axes) for y in qkv)
        out = segment_attention(apply_rotary(q, angles), apply_rotary(k, angles), v, segment_ids,
                                impl=self.cfg.attention, block=self.cfg.attention_block)
        out = constrain(out, axes)
        y = jnp.einsum("phd,hde->pe", out, compute_value(self.proj).astype(x.dtype))
        return y + compute_value(self.proj_bias).astype(x.dtype)


class MLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        pd = cfg.jnp_param_dtype
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.linear_fc1 = Dense(cfg.hidden_size, cfg.intermediate_size, ("vit_embed", "vit_mlp"), pd, rngs=rngs)
        self.linear_fc2 = Dense(cfg.intermediate_size, cfg.hidden_size, ("vit_mlp", "vit_embed"), pd, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = constrain(self.act(self.linear_fc1(x)), ("act_patches", "act_mlp"))
        return self.linear_fc2(h)


class Block(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        pd = cfg.jnp_param_dtype
        self.norm1 = LayerNorm(cfg.hidden_size, "vit_embed", cfg.layer_norm_eps, pd, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.norm2 = LayerNorm(cfg.hidden_size, "vit_embed", cfg.layer_norm_eps, pd, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, angles: jax.Array, segment_ids: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x), angles, segment_ids)
        x = x + self.mlp(self.norm2(x))
        return constrain(x, ("act_patches", "act_embed"))


class Merger(nnx.Module):
    """merge_unit consecutive patches -> one token of the decoder's width. The main merger
    normalises each patch before concatenating (`after_merge=False`), the deepstack mergers the
    concatenation."""

    def __init__(self, cfg: VisionConfig, after_merge: bool, *, rngs: nnx.Rngs):
        pd, u = cfg.jnp_param_dtype, cfg.merged_size
        self.merge_unit, self.after_merge = cfg.merge_unit, after_merge
        norm_dim, norm_axis = (u, "vit_merge") if after_merge else (cfg.hidden_size, "vit_embed")
        self.norm = LayerNorm(norm_dim, norm_axis, cfg.layer_norm_eps, pd, rngs=rngs)
        self.linear_fc1 = Dense(u, u, ("vit_merge", "vit_merge_mlp"), pd, rngs=rngs)
        self.linear_fc2 = Dense(u, cfg.out_hidden_size, ("vit_merge_mlp", "embed"), pd, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        def merged(y: jax.Array) -> jax.Array:
            return y.reshape(y.shape[0] // self.merge_unit, -1)

        x = self.norm(merged(x)) if self.after_merge else merged(self.norm(x))
        h = jax.nn.gelu(self.linear_fc1(x), approximate=False)
        return constrain(self.linear_fc2(h), ("act_patches", "act_embed"))


class VisionTower(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        e, pd = cfg.hidden_size, cfg.jnp_param_dtype
        self.patch_embed = Dense(cfg.patch_dim, e, ("vit_patch", "vit_embed"), pd, rngs=rngs)
        self.pos_embed = make_param(rngs, (cfg.num_position_embeddings, e), ("vit_pos", "vit_embed"), pd)
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.merger = Merger(cfg, after_merge=False, rngs=rngs)
        deepstack = [Merger(cfg, after_merge=True, rngs=rngs) for _ in cfg.deepstack_visual_indexes]
        self.deepstack_mergers = nnx.List(deepstack)

    def _run_blocks(self, start: int, end: int, x: jax.Array, angles: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """Blocks start..end-1 on x: a Python loop, or (`scan_blocks`) `lax.scan` over their
        parameters stacked; each block checkpointed by the `remat` policy."""
        policy = REMAT_POLICIES[self.cfg.remat]

        def apply(graphdef, state, x):
            return nnx.merge(graphdef, state)(x, angles, segment_ids)

        if policy is not None:
            apply = jax.checkpoint(apply, policy=policy, prevent_cse=not self.cfg.scan_blocks, static_argnums=(0,))
        splits = [nnx.split(self.blocks[i]) for i in range(start, end)]
        if self.cfg.scan_blocks and len(splits) > 1:
            stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(state for _, state in splits))
            return jax.lax.scan(lambda x, state: (apply(splits[0][0], state, x), None), x, stacked)[0]
        for graphdef, state in splits:
            x = apply(graphdef, state, x)
        return x

    def _check(self, patches: jax.Array, layout: VisionLayout) -> None:
        cfg = self.cfg
        p = patches.shape[0]
        if patches.ndim != 2 or patches.shape[1] != cfg.patch_dim:
            raise ValueError(f"patches have shape {patches.shape}; expected [patches, {cfg.patch_dim}]")
        if p % cfg.merge_unit:
            raise ValueError(f"{p} patches: expected a multiple of spatial_merge_size**2={cfg.merge_unit}")
        for name, rank in (("positions", 2), ("pos_index", 2), ("pos_weight", 2), ("segment_ids", 1)):
            shape = getattr(layout, name).shape
            if shape[:1] != (p,) or len(shape) != rank:
                raise ValueError(f"layout.{name} has shape {shape}; expected {p} rows for {p} patches")

    def __call__(self, patches: jax.Array, layout: VisionLayout) -> tuple[jax.Array, jax.Array]:
        """patches [P, patch_dim] (pixel_values rows) and their `vision_layout` ->
        (image tokens [P / merge_unit, out_hidden_size],
         deepstack features [len(deepstack_visual_indexes), P / merge_unit, out_hidden_size]).
        Tokens of padding patches are meaningless and are to be dropped."""
        self._check(patches, layout)
        cfg = self.cfg
        x = self.patch_embed(constrain(patches.astype(cfg.jnp_dtype), ("act_patches", None)))
        table = compute_value(self.pos_embed).astype(jnp.float32)
        pos = jnp.einsum("pke,pk->pe", jnp.take(table, layout.pos_index, axis=0), layout.pos_weight.astype(jnp.float32))
        x = constrain(x + pos.astype(x.dtype), ("act_patches", "act_embed"))
        angles = rotary_angles(layout.positions, cfg.head_dim, cfg.rope_theta)
        deepstack = []
        ends = sorted({*cfg.deepstack_visual_indexes, cfg.depth - 1})
        for start, end in zip([0] + [e + 1 for e in ends[:-1]], ends):
            x = self._run_blocks(start, end + 1, x, angles, layout.segment_ids)
            if end in cfg.deepstack_visual_indexes:
                deepstack.append(self.deepstack_mergers[cfg.deepstack_visual_indexes.index(end)](x))
        tokens = self.merger(x)
        if not deepstack:
            return tokens, jnp.zeros((0, *tokens.shape), tokens.dtype)
        return tokens, jnp.stack(deepstack)


# ----------------------------------------------------------------------------- HF tensor names


def vision_tensor_layout(cfg: VisionConfig, prefix: str = "model.visual.", at: tuple[Any, ...] = ()) -> list[TensorMap]:
    """Where each tensor of a Qwen3-VL checkpoint's vision tower (names `prefix` + HF's) lives in
    a VisionTower: the NNX state path (under `at`, the tower's path in an enclosing model) and the
    conversions between HF's shape and ours."""
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

    def norm(name: str, path: tuple[Any, ...], dim: int) -> list[TensorMap]:
        return [tm(f"{name}.weight", path + ("scale",), (dim,)), tm(f"{name}.bias", path + ("bias",), (dim,))]

    def merger(name: str, path: tuple[Any, ...], norm_dim: int) -> list[TensorMap]:
        return (norm(f"{name}.norm", path + ("norm",), norm_dim)
                + dense(f"{name}.linear_fc1", path + ("linear_fc1",), u, u)
                + dense(f"{name}.linear_fc2", path + ("linear_fc2",), u, o))

    maps = [tm("patch_embed.proj.weight", ("patch_embed", "weight"), (e, c, t, p, p), conv),
            tm("patch_embed.proj.bias", ("patch_embed", "bias"), (e,)),
            tm("pos_embed.weight", ("pos_embed",), (cfg.num_position_embeddings, e))]
    for i in range(cfg.depth):
        b, at_b = f"blocks.{i}.", ("blocks", i)
        maps += norm(b + "norm1", at_b + ("norm1",), e) + norm(b + "norm2", at_b + ("norm2",), e)
        maps += [tm(b + "attn.qkv.weight", at_b + ("attn", "qkv"), (3 * e, e), qkv),
                 tm(b + "attn.qkv.bias", at_b + ("attn", "qkv_bias"), (3 * e,), qkv_bias),
                 tm(b + "attn.proj.weight", at_b + ("attn", "proj"), (e, e), proj),
                 tm(b + "attn.proj.bias", at_b + ("attn", "proj_bias"), (e,))]
        maps += dense(b + "mlp.linear_fc1", at_b + ("mlp", "linear_fc1"), e, m)
        maps += dense(b + "mlp.linear_fc2", at_b + ("mlp", "linear_fc2"), m, e)
    maps += merger("merger", ("merger",), e)
    for j in range(len(cfg.deepstack_visual_indexes)):
        maps += merger(f"deepstack_merger_list.{j}", ("deepstack_mergers", j), u)
    return maps


def load_vision_state(tower: VisionTower, tensors: dict[str, np.ndarray], prefix: str = "model.visual.") -> None:
    """Set every parameter of `tower` from `tensors` (HF names -> arrays, e.g. a state_dict as
    NumPy), in place. Tensors under other prefixes are ignored; a missing or unexpected tensor
    under `prefix`, or a wrong shape, raises CheckpointError naming it before anything is set."""
    layout = vision_tensor_layout(tower.cfg, prefix)
    expected = {t.hf_name for t in layout}
    missing = sorted(expected - set(tensors))
    if missing:
        raise CheckpointError(f"missing vision tensor {missing[0]!r} ({len(missing)} missing)")
    unexpected = sorted(n for n in tensors if n.startswith(prefix) and n not in expected)
    if unexpected:
        raise CheckpointError(f"unexpected vision tensor {unexpected[0]!r} for {tower.cfg}")
    for t in layout:
        shape = tuple(np.shape(tensors[t.hf_name]))
        if shape != t.hf_shape:
            raise CheckpointError(f"tensor {t.hf_name!r} has shape {shape}, expected {t.hf_shape}")
    state = nnx.state(tower, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    for t in layout:
        var = flat[t.path]
        value = t.to_ours(np.asarray(tensors[t.hf_name]))
        assert value.shape == var.shape, (t.hf_name, value.shape, var.shape)
        var.set_value(jnp.asarray(value, dtype=var.dtype))
    nnx.update(tower, nnx.from_flat_state(flat))
