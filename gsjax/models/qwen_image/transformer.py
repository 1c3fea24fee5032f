"""The Qwen-Image MMDiT (diffusers' QwenImageTransformer2DModel) in Flax NNX.

Image tokens (packed 2x2 latent patches) and text tokens (the text encoder's hidden states) each
keep their own weights (projections, MLPs, AdaLN modulation) and meet in one joint attention per
block. The timestep enters every block as shift / scale / gate of both streams. Positions are a
3D rotary embedding over (frame, height, width) for each image in the sequence (the noisy latents
are frame 0, reference images frames 1, 2, ...) with height and width centred on zero; text tokens
continue on the diagonal after the largest image.

`QwenImageTransformer(cfg)(latents, text, text_mask, timestep, img_shapes)` returns the velocity
for the image tokens, [B, S_img, patch*patch*out_channels].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gsjax.models.hf_io import CheckpointError
from gsjax.models.qwen_image.layers import Linear, RMSNorm, layer_norm
from gsjax.parallel import constrain

ImgShapes = tuple[tuple[int, int, int], ...]  # (frames, height, width) in patches, one per image

ROPE_THETA = 10_000.0
TIME_CHANNELS = 256


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    patch_size: int = 2
    in_channels: int = 64
    out_channels: int = 16
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def __post_init__(self) -> None:
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(f"axes_dims_rope {self.axes_dims_rope} must sum to attention_head_dim {self.attention_head_dim}")
        if any(d % 2 for d in self.axes_dims_rope):
            raise ValueError(f"axes_dims_rope {self.axes_dims_rope} must be even")

    def num_params(self) -> int:
        d, m, t = self.inner_dim, 4 * self.inner_dim, self.joint_attention_dim
        block = 2 * (d * 6 * d + 6 * d) + 2 * (4 * (d * d + d)) + 4 * self.attention_head_dim + 2 * (2 * d * m + m + d)
        out = self.patch_size**2 * self.out_channels
        return (TIME_CHANNELS * d + d + d * d + d + t + self.in_channels * d + d + t * d + d
                + self.num_layers * block + d * 2 * d + 2 * d + d * out + out)

    def to_diffusers(self) -> dict[str, Any]:
        return {
            "_class_name": "QwenImageTransformer2DModel",
            "patch_size": self.patch_size, "in_channels": self.in_channels, "out_channels": self.out_channels,
            "num_layers": self.num_layers, "attention_head_dim": self.attention_head_dim,
            "num_attention_heads": self.num_attention_heads, "joint_attention_dim": self.joint_attention_dim,
            "guidance_embeds": False, "axes_dims_rope": list(self.axes_dims_rope), "zero_cond_t": False,
            "use_additional_t_cond": False, "use_layer3d_rope": False,
        }


QWEN_IMAGE_20B = TransformerConfig(dtype="bfloat16", param_dtype="bfloat16")

# Options of the diffusers class that gsjax does not implement: refused with the field's name.
_UNSUPPORTED = {"guidance_embeds": False, "zero_cond_t": False, "use_additional_t_cond": False, "use_layer3d_rope": False}


def transformer_config_from_diffusers(cfg: dict[str, Any], source: str, **overrides: Any) -> TransformerConfig:
    if cfg.get("_class_name", "QwenImageTransformer2DModel") != "QwenImageTransformer2DModel":
        raise CheckpointError(f"{source}: _class_name is {cfg.get('_class_name')!r}; expected 'QwenImageTransformer2DModel'")
    for key, ok in _UNSUPPORTED.items():
        if bool(cfg.get(key, ok)) != ok:
            raise CheckpointError(f"{source}: field {key!r} is {cfg[key]!r}; gsjax supports only {ok}")
    fields = {f.name for f in dataclasses.fields(TransformerConfig)} - {"dtype", "param_dtype"}
    kw = {k: cfg[k] for k in fields if k in cfg}
    if kw.get("out_channels") is None:
        kw["out_channels"] = kw.get("in_channels", 64)
    if "axes_dims_rope" in kw:
        kw["axes_dims_rope"] = tuple(int(a) for a in kw["axes_dims_rope"])
    try:
        return TransformerConfig(**{**kw, **overrides})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from e


# ----------------------------------------------------------------------------- embeddings


def timestep_features(t: jax.Array, channels: int = TIME_CHANNELS) -> jax.Array:
    """Sinusoidal features of t * 1000, [cos | sin] (diffusers' Timesteps(flip_sin_to_cos=True,
    downscale_freq_shift=0, scale=1000)), in fp32."""
    half = channels // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = 1000.0 * (t.astype(jnp.float32)[:, None] * freqs[None, :])
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def _axis_angles(positions: np.ndarray, dim: int) -> np.ndarray:
    inv = (1.0 / np.power(np.float32(ROPE_THETA), np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))).astype(np.float32)
    return np.outer(positions.astype(np.float32), inv).astype(np.float32)


def rope_angles(img_shapes: ImgShapes, text_len: int, axes_dims: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rotation angles [S_img, D/2] and [text_len, D/2] (host constants; shapes are static).

    Image i is frame offset i; height and width positions run from -(n - n//2) to n//2 - 1.
    Text position k sits at max over images of max(h//2, w//2) + k on all three axes.
    """
    blocks, start = [], 0
    for idx, (f, h, w) in enumerate(img_shapes):
        fa = _axis_angles(np.arange(idx, idx + f), axes_dims[0])
        ha = _axis_angles(np.arange(-(h - h // 2), h // 2), axes_dims[1])
        wa = _axis_angles(np.arange(-(w - w // 2), w // 2), axes_dims[2])
        grid = np.concatenate([
            np.broadcast_to(fa[:, None, None], (f, h, w, fa.shape[-1])),
            np.broadcast_to(ha[None, :, None], (f, h, w, ha.shape[-1])),
            np.broadcast_to(wa[None, None, :], (f, h, w, wa.shape[-1])),
        ], axis=-1)
        blocks.append(grid.reshape(f * h * w, -1))
        start = max(start, h // 2, w // 2)
    text_pos = np.arange(start, start + text_len)
    text = np.concatenate([_axis_angles(text_pos, d) for d in axes_dims], axis=-1)
    return np.concatenate(blocks, axis=0), text


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate consecutive pairs (x[2i], x[2i+1]) of x [B, L, H, D] by angles with cos/sin [L, D/2]."""
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


# ----------------------------------------------------------------------------- blocks


class FeedForward(nnx.Module):
    def __init__(self, dim: int, pd, *, rngs: nnx.Rngs):
        self.fc_in = Linear(dim, 4 * dim, ("embed", "mlp"), pd, rngs=rngs)
        self.fc_out = Linear(4 * dim, dim, ("mlp", "embed"), pd, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = constrain(jax.nn.gelu(self.fc_in(x), approximate=True), ("act_batch", "act_len", "act_mlp"))
        return constrain(self.fc_out(h), ("act_batch", "act_len", "act_embed"))


class JointAttention(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        d, hd, pd = cfg.inner_dim, cfg.attention_head_dim, jnp.dtype(cfg.param_dtype)
        self.heads, self.head_dim = cfg.num_attention_heads, hd
        qkv = ("embed", "q_heads")
        self.to_q, self.to_k, self.to_v = (Linear(d, d, qkv, pd, rngs=rngs) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (Linear(d, d, qkv, pd, rngs=rngs) for _ in range(3))
        self.to_out = Linear(d, d, ("q_heads", "embed"), pd, rngs=rngs)
        self.to_add_out = Linear(d, d, ("q_heads", "embed"), pd, rngs=rngs)
        self.norm_q, self.norm_k, self.norm_added_q, self.norm_added_k = (
            RMSNorm(hd, "head_dim", pd, rngs=rngs) for _ in range(4))

    def _heads(self, x: jax.Array) -> jax.Array:
        y = x.reshape(*x.shape[:-1], self.heads, self.head_dim)
        return constrain(y, ("act_batch", "act_len", "act_heads", "act_head_dim"))

    def __call__(self, img, txt, key_mask, rope) -> tuple[jax.Array, jax.Array]:
        img_cos, img_sin, txt_cos, txt_sin = rope
        iq = apply_rope(self.norm_q(self._heads(self.to_q(img))), img_cos, img_sin)
        ik = apply_rope(self.norm_k(self._heads(self.to_k(img))), img_cos, img_sin)
        iv = self._heads(self.to_v(img))
        tq = apply_rope(self.norm_added_q(self._heads(self.add_q_proj(txt))), txt_cos, txt_sin)
        tk = apply_rope(self.norm_added_k(self._heads(self.add_k_proj(txt))), txt_cos, txt_sin)
        tv = self._heads(self.add_v_proj(txt))
        q, k, v = (jnp.concatenate(p, axis=1) for p in ((tq, iq), (tk, ik), (tv, iv)))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * (self.head_dim**-0.5)
        if key_mask is not None:
            scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        out = constrain(out, ("act_batch", "act_len", "act_heads", "act_head_dim"))
        out = out.reshape(*out.shape[:2], -1)
        n_txt = txt.shape[1]
        return self.to_out(out[:, n_txt:]), self.to_add_out(out[:, :n_txt])


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class TransformerBlock(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        d, pd = cfg.inner_dim, jnp.dtype(cfg.param_dtype)
        self.img_mod = Linear(d, 6 * d, ("embed", "dit_mod"), pd, rngs=rngs)
        self.txt_mod = Linear(d, 6 * d, ("embed", "dit_mod"), pd, rngs=rngs)
        self.attn = JointAttention(cfg, rngs=rngs)
        self.img_mlp = FeedForward(d, pd, rngs=rngs)
        self.txt_mlp = FeedForward(d, pd, rngs=rngs)

    def __call__(self, img, txt, temb, key_mask, rope):
        silu = jax.nn.silu(temb)
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = jnp.split(self.img_mod(silu), 6, axis=-1)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = jnp.split(self.txt_mod(silu), 6, axis=-1)
        img_attn, txt_attn = self.attn(
            _modulate(layer_norm(img), i_shift1, i_scale1), _modulate(layer_norm(txt), t_shift1, t_scale1), key_mask, rope)
        img = img + i_gate1[:, None] * img_attn
        txt = txt + t_gate1[:, None] * txt_attn
        img = img + i_gate2[:, None] * self.img_mlp(_modulate(layer_norm(img), i_shift2, i_scale2))
        txt = txt + t_gate2[:, None] * self.txt_mlp(_modulate(layer_norm(txt), t_shift2, t_scale2))
        axes = ("act_batch", "act_len", "act_embed")
        return constrain(img, axes), constrain(txt, axes)


class QwenImageTransformer(nnx.Module):
    # diffusers keeps these Linears inside nn.Sequential / nn.ModuleList containers.
    HF_RENAMES = (
        (".img_mod.", ".img_mod.1."), (".txt_mod.", ".txt_mod.1."), (".to_out.", ".to_out.0."),
        (".fc_in.", ".net.0.proj."), (".fc_out.", ".net.2."),
        (".time_linear_", ".time_text_embed.timestep_embedder.linear_"), (".norm_out_linear.", ".norm_out.linear."),
    )

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, pd = cfg.inner_dim, jnp.dtype(cfg.param_dtype)
        self.time_linear_1 = Linear(TIME_CHANNELS, d, ("time_freq", "embed"), pd, rngs=rngs)
        self.time_linear_2 = Linear(d, d, ("embed", "embed_out"), pd, rngs=rngs)
        self.txt_norm = RMSNorm(cfg.joint_attention_dim, "text_embed", pd, rngs=rngs)
        self.img_in = Linear(cfg.in_channels, d, ("latent", "embed"), pd, rngs=rngs)
        self.txt_in = Linear(cfg.joint_attention_dim, d, ("text_embed", "embed"), pd, rngs=rngs)
        self.transformer_blocks = nnx.List([TransformerBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm_out_linear = Linear(d, 2 * d, ("embed", "dit_mod"), pd, rngs=rngs)
        self.proj_out = Linear(d, cfg.patch_size**2 * cfg.out_channels, ("embed", "latent"), pd, rngs=rngs)

    def __call__(
        self,
        latents: jax.Array,
        text: jax.Array,
        text_mask: jax.Array | None,
        timestep: jax.Array,
        img_shapes: ImgShapes,
    ) -> jax.Array:
        """latents [B, S_img, in_channels], text [B, L, joint_attention_dim], text_mask [B, L] (True =
        a real token; None = all real), timestep [B] in [0, 1] -> [B, S_img, p*p*out_channels]."""
        cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
        n_img = sum(f * h * w for f, h, w in img_shapes)
        if latents.shape[1] != n_img:
            raise ValueError(f"latents have {latents.shape[1]} tokens but img_shapes {img_shapes} describe {n_img}")
        img = constrain(self.img_in(latents.astype(dt)), ("act_batch", "act_len", "act_embed"))
        txt = constrain(self.txt_in(self.txt_norm(text.astype(dt))), ("act_batch", "act_len", "act_embed"))
        temb = self.time_linear_2(jax.nn.silu(self.time_linear_1(timestep_features(timestep).astype(dt))))
        temb = constrain(temb, ("act_batch", "act_embed"))
        img_angles, txt_angles = rope_angles(img_shapes, text.shape[1], cfg.axes_dims_rope)
        rope = (jnp.cos(img_angles), jnp.sin(img_angles), jnp.cos(txt_angles), jnp.sin(txt_angles))
        key_mask = None
        if text_mask is not None:
            key_mask = jnp.concatenate([text_mask.astype(bool), jnp.ones(img.shape[:2], bool)], axis=1)
        for block in self.transformer_blocks:
            img, txt = block(img, txt, temb, key_mask, rope)
        scale, shift = jnp.split(self.norm_out_linear(jax.nn.silu(temb)), 2, axis=-1)
        return self.proj_out(_modulate(layer_norm(img), shift, scale))
