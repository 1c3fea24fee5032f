"""The Qwen3 decoder (and the Qwen2 layout: q/k/v biases, no q/k norm) in Flax NNX.

One definition from a 2-layer test model to Qwen3-8B. Every parameter carries logical axis names in
its `axes` metadata and every large activation is constrained by logical name; the mesh and the
rules mapping names to mesh axes come from `gsjax.parallel`, never from here.

Two ways to run it:
- `model(ModelInput(tokens, positions, segment_ids))`: a full causal pass (training, scoring);
  tokens with segment id 0 are padding, and tokens attend only within their own segment (packing).
- `model.forward_cached(ModelInput(tokens), cache, starts, rows)`: the sampler's pass. Batch row
  b's tokens are written into cache slot `rows[b]` at [starts[b], starts[b] + T) and attend to
  everything before them in that slot.

Both take the seam's `ModelInput` (`gsjax.models.interface`). Below it, `decode` and
`decode_cached` run the layers on input embeddings, with optional "deepstack" features added to
the first layers' outputs at image tokens: what `gsjax.models.qwen3_vl` builds on. Positions may be
[B, T] or multimodal [3, B, T] (`mrope_section`).

How it runs is set in the config too, apart from the architecture (none of it changes the
numbers beyond float rounding): `scan_layers` stacks the layers' parameters on a leading `layers`
axis and runs them with `lax.scan` (one compiled layer; what an 8B model needs), `remat` picks
what the backward pass recomputes (`REMAT_POLICIES`), and `attention` the implementation of full
causal passes (`gsjax.models.attention.IMPLEMENTATIONS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gsjax.models.attention import IMPLEMENTATIONS, cached_attention, causal_attention
from gsjax.models.interface import ModelInput
from gsjax.parallel import compute_value, constrain

Family = Literal["qwen3", "qwen2"]

# What the backward pass keeps of each layer (everything else is recomputed): "none" keeps all
# (no rematerialisation), "full" only the layer's input, "dots" every matmul output, "dots_no_batch"
# the matmuls without a batch dimension (weights x activations, not attention scores).
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    attention_bias: bool = False  # biases on q/k/v (always on for Qwen2)
    qk_norm: bool = True  # per-head RMSNorm on q and k (Qwen3); off for Qwen2
    max_position_embeddings: int = 40960
    # Multimodal RoPE (Qwen3-VL): how many of the head_dim / 2 frequencies follow the temporal,
    # height and width position rows; interleaved (Qwen3-VL: t h w t h w ...) or in three runs
    # (Qwen2-VL, Qwen2.5-VL). Empty: one position row.
    mrope_section: tuple[int, ...] = ()
    mrope_interleaved: bool = True
    family: Family = "qwen3"
    dtype: str = "float32"  # activations and KV cache
    param_dtype: str = "float32"
    # How to run it (not part of a checkpoint).
    scan_layers: bool = False
    remat: str = "none"
    attention: str = "blocked"
    attention_block: int = 128  # query/key block of "blocked" and "splash" (512 suits TPUs)
    cache_block: int = 0  # the sampler's attention walks the KV cache in blocks of this many keys (0 = at once)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; expected one of {sorted(REMAT_POLICIES)}")
        if self.attention not in IMPLEMENTATIONS:
            raise ValueError(f"attention={self.attention!r}; expected one of {IMPLEMENTATIONS}")
        if self.mrope_section and (len(self.mrope_section) != 3 or sum(self.mrope_section) != self.head_dim // 2):
            raise ValueError(f"mrope_section={self.mrope_section} must be 3 counts summing to head_dim / 2 = "
                             f"{self.head_dim // 2}")

    @property
    def jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def num_params(self) -> int:
        e, h, kv, d, m = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate_size
        attn = e * (h + 2 * kv) * d + h * d * e + (2 * d if self.qk_norm else 0)
        attn += (h + 2 * kv) * d if self.attention_bias else 0
        layer = attn + 3 * e * m + 2 * e
        head = 0 if self.tie_embeddings else self.vocab_size * e
        return self.vocab_size * e + self.num_layers * layer + e + head


def tiny_config(**overrides) -> Qwen3Config:
    """A 2-layer model for tests and the offline world (about 0.3 M parameters)."""
    base = dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, rope_theta=10_000.0, tie_embeddings=True,
    )
    return Qwen3Config(**{**base, **overrides})


# Qwen3-8B as trained: bf16 compute over float32 master weights (an lr-1e-6 update is below bf16's
# resolution of the weights), scanned layers, full remat, splash attention.
QWEN3_8B = Qwen3Config(
    vocab_size=151_936, hidden_size=4096, intermediate_size=12_288, num_layers=36, num_heads=32,
    num_kv_heads=8, head_dim=128, rope_theta=1_000_000.0, tie_embeddings=False, dtype="bfloat16",
    param_dtype="float32", scan_layers=True, remat="full", attention="splash", attention_block=512,
    cache_block=4096,
)


# Deepstack features and where they go: ([k, N, embed] features, [B, T] index into N, -1 elsewhere).
Deepstack = tuple[jax.Array, jax.Array]


class KVCache(NamedTuple):
    """Keys and values of every layer and slot: [layers, slots, cache_len, kv_heads, head_dim]."""

    k: jax.Array
    v: jax.Array


CACHE_AXES = ("layers", "act_batch", "act_cache_len", "act_kv_heads", "act_head_dim")


def cache_shape(cfg: Qwen3Config, batch: int, length: int) -> tuple[int, ...]:
    return (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)


def init_cache(cfg: Qwen3Config, batch: int, length: int) -> KVCache:
    zeros = lambda: constrain(jnp.zeros(cache_shape(cfg, batch, length), cfg.jnp_dtype), CACHE_AXES)  # noqa: E731
    return KVCache(zeros(), zeros())


def make_param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype, init: str = "normal") -> nnx.Param:
    if init == "normal":
        value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        value = jnp.zeros(shape, jnp.float32)
    return nnx.Param(value.astype(dtype), axes=axes)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype, *, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = make_param(rngs, (dim,), ("norm",), dtype, "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # As Hugging Face does: normalise in fp32, cast back, then scale.
        return compute_value(self.scale).astype(x.dtype) * x32.astype(x.dtype)


def mrope_rows(section: tuple[int, ...], interleaved: bool) -> list[int]:
    """Which position row (0 temporal, 1 height, 2 width) drives each rotary frequency."""
    if not interleaved:
        return [row for row, n in enumerate(section) for _ in range(n)]
    rows = [0] * sum(section)
    for row in (1, 2):  # frequencies row, row + 3, ... below 3 * section[row]
        for i in range(row, 3 * section[row], 3):
            rows[i] = row
    return rows


def rope(x: jax.Array, positions: jax.Array, theta: float, section: tuple[int, ...] = (),
         interleaved: bool = True) -> jax.Array:
    """Rotary embedding, rotate-half convention. x: [B, T, N, D]; positions [B, T], or [3, B, T]
    with `section` (multimodal RoPE: each frequency follows one of the three rows)."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    positions = positions.astype(jnp.float32)
    if positions.ndim == 3:
        if not section:
            raise ValueError("[3, B, T] positions need a model with mrope_section")
        rows = jnp.asarray(mrope_rows(section, interleaved))
        angles = jnp.moveaxis(positions[rows], 0, -1) * inv_freq  # [B, T, D/2]
    else:
        angles = positions[..., None] * inv_freq  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class Attention(nnx.Module):
    def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        e, h, kv, d, pd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.jnp_param_dtype
        self.q_proj = make_param(rngs, (e, h, d), ("embed", "q_heads", "head_dim"), pd)
        self.k_proj = make_param(rngs, (e, kv, d), ("embed", "kv_heads", "head_dim"), pd)
        self.v_proj = make_param(rngs, (e, kv, d), ("embed", "kv_heads", "head_dim"), pd)
        self.o_proj = make_param(rngs, (h, d, e), ("q_heads", "head_dim", "embed"), pd)
        bias = cfg.attention_bias or cfg.family == "qwen2"
        self.q_bias = make_param(rngs, (h, d), ("q_heads", "head_dim"), pd, "zeros") if bias else None
        self.k_bias = make_param(rngs, (kv, d), ("kv_heads", "head_dim"), pd, "zeros") if bias else None
        self.v_bias = make_param(rngs, (kv, d), ("kv_heads", "head_dim"), pd, "zeros") if bias else None
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps, pd, rngs=rngs) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps, pd, rngs=rngs) if cfg.qk_norm else None

    def _project(self, x: jax.Array, kernel: nnx.Param, bias: nnx.Param | None, axes) -> jax.Array:
        y = jnp.einsum("bte,end->btnd", x, compute_value(kernel).astype(x.dtype))
        if bias is not None:
            y = y + compute_value(bias).astype(x.dtype)
        return constrain(y, axes)

    def _qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        cfg = self.cfg
        q = self._project(x, self.q_proj, self.q_bias, ("act_batch", "act_len", "act_heads", "act_head_dim"))
        k = self._project(x, self.k_proj, self.k_bias, ("act_batch", "act_len", "act_kv_heads", "act_head_dim"))
        v = self._project(x, self.v_proj, self.v_bias, ("act_batch", "act_len", "act_kv_heads", "act_head_dim"))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        turn = lambda y: rope(y, positions, cfg.rope_theta, cfg.mrope_section, cfg.mrope_interleaved)  # noqa: E731
        return turn(q), turn(k), v

    def _out(self, out: jax.Array, dtype) -> jax.Array:
        out = constrain(out, ("act_batch", "act_len", "act_heads", "act_head_dim"))
        y = jnp.einsum("bthd,hde->bte", out, compute_value(self.o_proj).astype(dtype))
        return constrain(y, ("act_batch", "act_len", "act_embed"))

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """A full causal pass within segments."""
        q, k, v = self._qkv(x, positions)
        out = causal_attention(q, k, v, segment_ids, impl=self.cfg.attention, block=self.cfg.attention_block)
        return self._out(out, x.dtype)

    def cached(self, x: jax.Array, positions: jax.Array, cache: KVCache, layer, where: jax.Array,
               rows: jax.Array | None) -> tuple[jax.Array, KVCache]:
        """Write this pass's keys and values into the cache (layer `layer`, entries `where` [B, T];
        batch row b into slot rows[b], or slot b when `rows` is None) and attend to the slot's
        history. `positions` only rotate."""
        q, k, v = self._qkv(x, positions)
        b, t = x.shape[:2]
        slots = jnp.arange(b) if rows is None else rows
        # Entries past the cache and padding rows (slot index out of range) are dropped, never
        # clamped onto earlier entries.
        at = (layer, jnp.broadcast_to(slots[:, None], (b, t)), where)
        cache = KVCache(cache.k.at[at].set(k.astype(cache.k.dtype), mode="drop"),
                        cache.v.at[at].set(v.astype(cache.v.dtype), mode="drop"))
        keys, values = cache.k[layer], cache.v[layer]
        if rows is not None:
            read = jnp.minimum(rows, keys.shape[0] - 1)
            keys, values = keys[read], values[read]
        out = cached_attention(q, keys.astype(x.dtype), values.astype(x.dtype), where, block=self.cfg.cache_block)
        return self._out(out, x.dtype), cache


class MLP(nnx.Module):
    def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
        e, m, pd = cfg.hidden_size, cfg.intermediate_size, cfg.jnp_param_dtype
        self.gate_proj = make_param(rngs, (e, m), ("embed", "mlp"), pd)
        self.up_proj = make_param(rngs, (e, m), ("embed", "mlp"), pd)
        self.down_proj = make_param(rngs, (m, e), ("mlp", "embed"), pd)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = x @ compute_value(self.gate_proj).astype(x.dtype)
        up = x @ compute_value(self.up_proj).astype(x.dtype)
        h = constrain(jax.nn.silu(gate) * up, ("act_batch", "act_len", "act_mlp"))
        return constrain(h @ compute_value(self.down_proj).astype(x.dtype), ("act_batch", "act_len", "act_embed"))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
        pd = cfg.jnp_param_dtype
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, rngs=rngs)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, positions, segment_ids):
        x = x + self.self_attn(self.input_layernorm(x), positions, segment_ids)
        return x + self.mlp(self.post_attention_layernorm(x))

    def cached(self, x, positions, cache, layer, where, rows):
        attn, cache = self.self_attn.cached(self.input_layernorm(x), positions, cache, layer, where, rows)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), cache


def stack_layers(layers: list[nnx.Module]) -> nnx.Module:
    """One module whose every parameter is the layers' parameters stacked on a new leading axis
    (logical name `layers`): what `lax.scan` runs over."""
    graphdef, _ = nnx.split(layers[0])
    flats = [dict(nnx.to_flat_state(nnx.state(layer))) for layer in layers]
    stacked = {}
    for path, var in flats[0].items():
        axes = ("layers",) + tuple(var.get_metadata()["axes"])
        stacked[path] = type(var)(jnp.stack([f[path][...] for f in flats]), axes=axes)
    return nnx.merge(graphdef, nnx.from_flat_state(stacked))


class Qwen3(nnx.Module):
    def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = cfg.jnp_param_dtype
        self.embed = make_param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pd)
        layers = [DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)]
        # Scanned or not, layer i draws the same initial values from the same seed.
        self.layers = stack_layers(layers) if cfg.scan_layers else nnx.List(layers)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, rngs=rngs)
        self.lm_head = None if cfg.tie_embeddings else make_param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pd)

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        x = jnp.take(compute_value(self.embed), tokens, axis=0).astype(self.cfg.jnp_dtype)
        return constrain(x, ("act_batch", "act_len", "act_embed"))

    def head(self) -> jax.Array:
        """The output projection [embed, vocab] (the embedding's transpose when tied)."""
        return compute_value(self.embed).T if self.lm_head is None else compute_value(self.lm_head)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """fp32 logits from final hidden states [..., embed]."""
        return jnp.einsum("...e,ev->...v", hidden, self.head().astype(hidden.dtype),
                          preferred_element_type=jnp.float32)

    def _run_layers(self, step: Callable[[DecoderLayer, Any, Any], Any], carry: Any, remat: bool) -> Any:
        """carry = step(layer, carry, i) for each layer i in order: a Python loop over the layers,
        or `lax.scan` over their stacked parameters; each layer checkpointed by the remat policy."""
        policy = REMAT_POLICIES[self.cfg.remat] if remat else None

        def apply(graphdef, carry, state, i):
            return step(nnx.merge(graphdef, state), carry, i)

        if policy is not None:
            apply = jax.checkpoint(apply, policy=policy, prevent_cse=not self.cfg.scan_layers, static_argnums=(0,))
        if self.cfg.scan_layers:
            graphdef, state = nnx.split(self.layers)
            carry, _ = jax.lax.scan(lambda c, xs: (apply(graphdef, c, *xs), None), carry,
                                    (state, jnp.arange(self.cfg.num_layers)))
            return carry
        for i, layer in enumerate(self.layers):
            graphdef, state = nnx.split(layer)
            carry = apply(graphdef, carry, state, i)
        return carry

    def _inject(self, x: jax.Array, deepstack: Deepstack | None, i) -> jax.Array:
        """After layer i < k, add deepstack feature i to the image tokens' hidden states."""
        if deepstack is None:
            return x
        features, index = deepstack  # [k, N, embed], [B, T] (-1: not an image token)
        k = features.shape[0]

        def add(x):
            picked = jnp.take(features[jnp.minimum(i, k - 1)], jnp.maximum(index, 0), axis=0).astype(x.dtype)
            return x + jnp.where((index >= 0)[..., None], picked, jnp.zeros((), x.dtype))

        if isinstance(i, int):  # the layers run as a Python loop
            return add(x) if i < k else x
        return jax.lax.cond(i < k, add, lambda x: x, x)

    def decode(self, x: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
               deepstack: Deepstack | None = None) -> jax.Array:
        """Final-norm hidden states [B, T, embed] of a full causal pass over input embeddings x."""
        b, t = x.shape[:2]
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        x = self._run_layers(lambda layer, x, i: self._inject(layer(x, positions, segment_ids), deepstack, i),
                             x, remat=True)
        return self.norm(x)

    def decode_cached(self, x: jax.Array, cache: KVCache, starts: jax.Array, rows: jax.Array | None = None,
                      positions: jax.Array | None = None, deepstack: Deepstack | None = None
                      ) -> tuple[jax.Array, KVCache]:
        """`decode` for the sampler: x's tokens are cache entries [starts[b], starts[b] + T) of slot
        rows[b]; `positions` (default: those entries) only rotate."""
        b, t = x.shape[:2]
        where = starts[:, None] + jnp.arange(t)[None, :]
        positions = where if positions is None else positions

        def step(layer, carry, i):
            x, cache = carry
            x, cache = layer.cached(x, positions, cache, i, where, rows)
            return self._inject(x, deepstack, i), cache

        x, cache = self._run_layers(step, (x, cache), remat=False)
        return self.norm(x), cache

    def _text_embeddings(self, inputs: ModelInput) -> jax.Array:
        if not isinstance(inputs, ModelInput):
            raise TypeError(f"expected a gsjax.models.interface.ModelInput, got {type(inputs).__name__}")
        if inputs.vision is not None:
            raise ValueError("this Qwen3 is a text-only model: its input cannot carry images (use Qwen3VL)")
        return self.embed_tokens(inputs.tokens)

    def hidden_states(self, inputs: ModelInput) -> jax.Array:
        """Final-norm hidden states [B, T, embed] of a full causal pass."""
        return self.decode(self._text_embeddings(inputs), inputs.positions, inputs.segment_ids)

    def __call__(self, inputs: ModelInput) -> jax.Array:
        """fp32 logits [B, T, vocab] of a full causal pass."""
        return constrain(self.logits(self.hidden_states(inputs)), ("act_batch", "act_len", "act_vocab"))

    def forward_cached(self, inputs: ModelInput, cache: KVCache, starts: jax.Array, rows: jax.Array | None = None
                       ) -> tuple[jax.Array, KVCache]:
        """Hidden states [B, T, embed] for the input's tokens written at per-row offsets `starts`
        [B] of cache slots `rows` [B] (None: row b is slot b; an out-of-range slot is a padding row)."""
        return self.decode_cached(self._text_embeddings(inputs), cache, starts, rows, inputs.positions)
