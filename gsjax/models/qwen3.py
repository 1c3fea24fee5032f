"""The Qwen3 decoder (and the Qwen2 layout: q/k/v biases, no q/k norm) in Flax NNX.

One definition from a 2-layer test model to Qwen3-8B. Every parameter carries logical axis names in
its `axes` metadata and every large activation is constrained by logical name; the mesh and the
rules mapping names to mesh axes come from `gsjax.parallel`, never from here.

Two ways to run it:
- `model(tokens, positions=..., segment_ids=...)`: a full causal pass (training, scoring); tokens
  with segment id 0 are padding, and tokens attend only within their own segment (packing).
- `model.forward_cached(tokens, cache, starts)`: the sampler's pass. Row b's tokens are written to
  its KV cache at [starts[b], starts[b] + T) and attend to everything before them in that row.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gsjax.parallel import constrain

Family = Literal["qwen3", "qwen2"]


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
    family: Family = "qwen3"
    dtype: str = "float32"  # activations and KV cache
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")

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


QWEN3_8B = Qwen3Config(
    vocab_size=151_936, hidden_size=4096, intermediate_size=12_288, num_layers=36, num_heads=32,
    num_kv_heads=8, head_dim=128, rope_theta=1_000_000.0, tie_embeddings=False, dtype="bfloat16",
    param_dtype="bfloat16",
)


class LayerCache(NamedTuple):
    """One layer's keys and values: [batch, cache_len, kv_heads, head_dim]."""

    k: jax.Array
    v: jax.Array


KVCache = tuple[LayerCache, ...]


def init_cache(cfg: Qwen3Config, batch: int, length: int) -> KVCache:
    shape = (batch, length, cfg.num_kv_heads, cfg.head_dim)
    axes = ("act_batch", "act_cache_len", "act_kv_heads", "act_head_dim")
    zeros = lambda: constrain(jnp.zeros(shape, cfg.jnp_dtype), axes)  # noqa: E731
    return tuple(LayerCache(zeros(), zeros()) for _ in range(cfg.num_layers))


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype, init: str = "normal") -> nnx.Param:
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
        self.scale = _param(rngs, (dim,), ("norm",), dtype, "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # As Hugging Face does: normalise in fp32, cast back, then scale.
        return self.scale[...].astype(x.dtype) * x32.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, rotate-half convention. x: [B, T, N, D], positions: [B, T]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def _write_rows(cache: jax.Array, new: jax.Array, starts: jax.Array) -> jax.Array:
    """cache[b, starts[b] + t] = new[b, t] for every row b; positions past the cache are dropped
    (padding of a bucketed prefill), never clamped onto earlier entries."""
    b, t = new.shape[:2]
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
    cols = starts[:, None] + jnp.arange(t)[None, :]
    return cache.at[rows, cols].set(new.astype(cache.dtype), mode="drop")


CAUSAL_BLOCK = 128  # query block of full causal passes (see Attention.__call__)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention: q [B, T, H, D], k/v [B, S, KV, D], mask [B, T, S] -> [B, T, H, D]."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (d**-0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, d)


class Attention(nnx.Module):
    def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        e, h, kv, d, pd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.jnp_param_dtype
        self.q_proj = _param(rngs, (e, h, d), ("embed", "q_heads", "head_dim"), pd)
        self.k_proj = _param(rngs, (e, kv, d), ("embed", "kv_heads", "head_dim"), pd)
        self.v_proj = _param(rngs, (e, kv, d), ("embed", "kv_heads", "head_dim"), pd)
        self.o_proj = _param(rngs, (h, d, e), ("q_heads", "head_dim", "embed"), pd)
        bias = cfg.attention_bias or cfg.family == "qwen2"
        self.q_bias = _param(rngs, (h, d), ("q_heads", "head_dim"), pd, "zeros") if bias else None
        self.k_bias = _param(rngs, (kv, d), ("kv_heads", "head_dim"), pd, "zeros") if bias else None
        self.v_bias = _param(rngs, (kv, d), ("kv_heads", "head_dim"), pd, "zeros") if bias else None
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps, pd, rngs=rngs) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps, pd, rngs=rngs) if cfg.qk_norm else None

    def _project(self, x: jax.Array, kernel: nnx.Param, bias: nnx.Param | None, axes) -> jax.Array:
        y = jnp.einsum("bte,end->btnd", x, kernel[...].astype(x.dtype))
        if bias is not None:
            y = y + bias[...].astype(x.dtype)
        return constrain(y, axes)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache: LayerCache | None = None,
        starts: jax.Array | None = None,
    ) -> tuple[jax.Array, LayerCache | None]:
        cfg = self.cfg
        q = self._project(x, self.q_proj, self.q_bias, ("act_batch", "act_len", "act_heads", "act_head_dim"))
        k = self._project(x, self.k_proj, self.k_bias, ("act_batch", "act_len", "act_kv_heads", "act_head_dim"))
        v = self._project(x, self.v_proj, self.v_bias, ("act_batch", "act_len", "act_kv_heads", "act_head_dim"))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
        if cache is not None:
            cache = LayerCache(_write_rows(cache.k, k, starts), _write_rows(cache.v, v, starts))
            k, v = cache.k.astype(x.dtype), cache.v.astype(x.dtype)

        t = q.shape[1]
        if cache is None and t % CAUSAL_BLOCK == 0 and t > CAUSAL_BLOCK:
            # A full causal pass: each block of queries attends to the keys up to its end only.
            # The blocks above the diagonal are masked anyway; skipping them halves the work.
            ends = range(CAUSAL_BLOCK, t + 1, CAUSAL_BLOCK)
            out = jnp.concatenate([_attend(q[:, e - CAUSAL_BLOCK:e], k[:, :e], v[:, :e],
                                           mask[:, e - CAUSAL_BLOCK:e, :e]) for e in ends], axis=1)
        else:
            out = _attend(q, k, v, mask)
        out = constrain(out, ("act_batch", "act_len", "act_heads", "act_head_dim"))
        y = jnp.einsum("bthd,hde->bte", out, self.o_proj[...].astype(x.dtype))
        return constrain(y, ("act_batch", "act_len", "act_embed")), cache


class MLP(nnx.Module):
    def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
        e, m, pd = cfg.hidden_size, cfg.intermediate_size, cfg.jnp_param_dtype
        self.gate_proj = _param(rngs, (e, m), ("embed", "mlp"), pd)
        self.up_proj = _param(rngs, (e, m), ("embed", "mlp"), pd)
        self.down_proj = _param(rngs, (m, e), ("mlp", "embed"), pd)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = x @ self.gate_proj[...].astype(x.dtype)
        up = x @ self.up_proj[...].astype(x.dtype)
        h = constrain(jax.nn.silu(gate) * up, ("act_batch", "act_len", "act_mlp"))
        return constrain(h @ self.down_proj[...].astype(x.dtype), ("act_batch", "act_len", "act_embed"))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
        pd = cfg.jnp_param_dtype
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, rngs=rngs)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, positions, mask, cache=None, starts=None):
        attn, cache = self.self_attn(self.input_layernorm(x), positions, mask, cache, starts)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, cache


class Qwen3(nnx.Module):
    def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = cfg.jnp_param_dtype
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pd)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, rngs=rngs)
        self.lm_head = None if cfg.tie_embeddings else _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pd)

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.jnp_dtype)
        return constrain(x, ("act_batch", "act_len", "act_embed"))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """fp32 logits from final hidden states [..., embed]."""
        kernel = self.embed[...].T if self.lm_head is None else self.lm_head[...]
        out = jnp.einsum("...e,ev->...v", hidden, kernel.astype(hidden.dtype), preferred_element_type=jnp.float32)
        return out

    def hidden_states(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Final-norm hidden states [B, T, embed] of a full causal pass."""
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        causal = jnp.tril(jnp.ones((t, t), bool))[None]
        same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] != 0)
        mask = causal & same
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x, _ = layer(x, positions, mask)
        return self.norm(x)

    def __call__(self, tokens, positions=None, segment_ids=None) -> jax.Array:
        """fp32 logits [B, T, vocab] of a full causal pass."""
        return constrain(self.logits(self.hidden_states(tokens, positions, segment_ids)), ("act_batch", "act_len", "act_vocab"))

    def forward_cached(
        self, tokens: jax.Array, cache: KVCache, starts: jax.Array
    ) -> tuple[jax.Array, KVCache]:
        """Hidden states [B, T, embed] for `tokens` written at per-row offsets `starts` [B]."""
        b, t = tokens.shape
        positions = starts[:, None] + jnp.arange(t)[None, :]
        cache_len = cache[0].k.shape[1]
        mask = jnp.arange(cache_len)[None, None, :] <= positions[:, :, None]  # [B, T, S]
        x = self.embed_tokens(tokens)
        new_cache = []
        for layer, layer_cache in zip(self.layers, cache):
            x, layer_cache = layer(x, positions, mask, layer_cache, starts)
            new_cache.append(layer_cache)
        return self.norm(x), tuple(new_cache)
