"""The Qwen-Image VAE (diffusers' AutoencoderKLQwenImage, from Wan 2.1) for still images.

The checkpoint is a causal 3D VAE. For one frame, every causal 3D convolution sees only zero
padding before the frame, so it is a 2D convolution with the kernel's last temporal tap, and the
temporal up/down-sampling convolutions (`time_conv`) are skipped (diffusers skips them on the first
chunk too). gsjax keeps the full 3D kernels, so a folder loads and saves unchanged, and runs the 2D
network in channels-last layout: images [B, H, W, 3] in [-1, 1] <-> latents [B, H/8, W/8, z_dim].

`encode` returns the posterior mean (what the edit pipeline uses: `sample_mode="argmax"`);
`decode` clamps to [-1, 1].
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gsjax.models.hf_io import CheckpointError
from gsjax.models.qwen_image.layers import param

LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
                -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
               1.6382, 1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    input_channels: int = 3
    latents_mean: tuple[float, ...] = LATENTS_MEAN
    latents_std: tuple[float, ...] = LATENTS_STD
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def scale_factor(self) -> int:
        return 2 ** len(self.temperal_downsample)

    def __post_init__(self) -> None:
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"temperal_downsample {self.temperal_downsample} needs len(dim_mult) - 1 = "
                             f"{len(self.dim_mult) - 1} entries")
        if self.attn_scales:  # diffusers' encoder cannot run these blocks either (0.42: a TypeError)
            raise ValueError(f"attn_scales {self.attn_scales}: only [] (the Qwen-Image VAE's value) is supported")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean / latents_std need z_dim={self.z_dim} entries")

    def to_diffusers(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("dtype", "param_dtype")}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return {"_class_name": "AutoencoderKLQwenImage", **d, "dropout": 0.0}


def vae_config_from_diffusers(cfg: dict[str, Any], source: str, **overrides: Any) -> VAEConfig:
    if cfg.get("_class_name", "AutoencoderKLQwenImage") != "AutoencoderKLQwenImage":
        raise CheckpointError(f"{source}: _class_name is {cfg.get('_class_name')!r}; expected 'AutoencoderKLQwenImage'")
    fields = {f.name for f in dataclasses.fields(VAEConfig)} - {"dtype", "param_dtype"}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in fields}
    try:
        return VAEConfig(**{**kw, **overrides})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from e


# ----------------------------------------------------------------------------- layers

_CONV3D_AXES = ("conv_t", "conv_h", "conv_w", "conv_in", "conv_out")


def _conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int = 1, padding: int | str = "SAME") -> jax.Array:
    pad = padding if isinstance(padding, str) else [(padding, padding)] * 2
    y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (stride, stride), pad,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(x.dtype)


class CausalConv(nnx.Module):
    """A causal 3D convolution applied to one frame: the 2D convolution of its last temporal tap."""

    def __init__(self, din: int, dout: int, k: int, pd, *, rngs: nnx.Rngs, kt: int | None = None):
        kt = k if kt is None else kt
        self.pad = k // 2
        self.weight = param(rngs, (kt, k, k, din, dout), _CONV3D_AXES, pd, scale=(din * k * k) ** -0.5, hf_layout="conv")
        self.bias = param(rngs, (dout,), ("conv_out",), pd, "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        return _conv2d(x, self.weight[...][-1], self.bias[...], padding=self.pad)


class Conv2d(nnx.Module):
    def __init__(self, din: int, dout: int, k: int, pd, *, rngs: nnx.Rngs, stride: int = 1, padding: int = 0):
        self.stride, self.padding = stride, padding
        self.weight = param(rngs, (k, k, din, dout), _CONV3D_AXES[1:], pd, scale=(din * k * k) ** -0.5, hf_layout="conv")
        self.bias = param(rngs, (dout,), ("conv_out",), pd, "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        return _conv2d(x, self.weight[...], self.bias[...], self.stride, self.padding)


class ChannelRMSNorm(nnx.Module):
    """x / ||x||_2 over channels * sqrt(C) * gamma (diffusers' QwenImageRMS_norm, bias-free)."""

    def __init__(self, dim: int, pd, *, rngs: nnx.Rngs, images: bool = False):
        hf_shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.gamma = param(rngs, (dim,), ("norm",), pd, "ones", hf_shape=hf_shape)
        self.scale = dim**0.5

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
        return (x32 / jnp.maximum(norm, 1e-12)).astype(x.dtype) * self.scale * self.gamma[...].astype(x.dtype)


class ResidualBlock(nnx.Module):
    def __init__(self, din: int, dout: int, pd, *, rngs: nnx.Rngs):
        self.norm1 = ChannelRMSNorm(din, pd, rngs=rngs)
        self.conv1 = CausalConv(din, dout, 3, pd, rngs=rngs)
        self.norm2 = ChannelRMSNorm(dout, pd, rngs=rngs)
        self.conv2 = CausalConv(dout, dout, 3, pd, rngs=rngs)
        self.conv_shortcut = CausalConv(din, dout, 1, pd, rngs=rngs) if din != dout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x = self.conv1(jax.nn.silu(self.norm1(x)))
        x = self.conv2(jax.nn.silu(self.norm2(x)))
        return x + h


class AttentionBlock(nnx.Module):
    """Single-head self-attention over the pixels of each frame."""

    def __init__(self, dim: int, pd, *, rngs: nnx.Rngs):
        self.norm = ChannelRMSNorm(dim, pd, rngs=rngs, images=True)
        self.to_qkv = Conv2d(dim, 3 * dim, 1, pd, rngs=rngs)
        self.proj = Conv2d(dim, dim, 1, pd, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        q, k, v = jnp.split(self.to_qkv(self.norm(x)).reshape(b, h * w, 3 * c), 3, axis=-1)
        scores = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32) * c**-0.5
        out = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(scores, axis=-1).astype(v.dtype), v)
        return x + self.proj(out.reshape(b, h, w, c))


class Resample(nnx.Module):
    """2x spatial down- (zero-pad right/bottom, 3x3 stride 2) or up-sampling (nearest, 3x3 conv to
    half the channels). The '3d' modes also hold a temporal conv, unused for a single frame."""

    def __init__(self, dim: int, mode: str, pd, *, rngs: nnx.Rngs):
        self.up = mode.startswith("up")
        if self.up:
            self.resample_conv = Conv2d(dim, dim // 2, 3, pd, rngs=rngs, padding=1)
        else:
            self.resample_conv = Conv2d(dim, dim, 3, pd, rngs=rngs, stride=2)
        time_out = {"upsample3d": 2 * dim, "downsample3d": dim}.get(mode)
        self.time_conv = CausalConv(dim, time_out, 1, pd, rngs=rngs, kt=3) if time_out else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.up:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        else:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return self.resample_conv(x)


class MidBlock(nnx.Module):
    def __init__(self, dim: int, pd, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResidualBlock(dim, dim, pd, rngs=rngs) for _ in range(2)])
        self.attentions = nnx.List([AttentionBlock(dim, pd, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.resnets[0](x)
        return self.resnets[1](self.attentions[0](x))


class Encoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, pd, *, rngs: nnx.Rngs):
        dims = [cfg.base_dim * u for u in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv(cfg.input_channels, dims[0], 3, pd, rngs=rngs)
        blocks = []
        for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(din, dout, pd, rngs=rngs))
                din = dout
            if i != len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
                blocks.append(Resample(dout, mode, pd, rngs=rngs))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], pd, rngs=rngs)
        self.norm_out = ChannelRMSNorm(dims[-1], pd, rngs=rngs)
        self.conv_out = CausalConv(dims[-1], 2 * cfg.z_dim, 3, pd, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.norm_out(x)))


class UpBlock(nnx.Module):
    def __init__(self, din: int, dout: int, num_res_blocks: int, mode: str | None, pd, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResidualBlock(din if i == 0 else dout, dout, pd, rngs=rngs)
                                 for i in range(num_res_blocks + 1)])
        self.upsamplers = nnx.List([Resample(dout, mode, pd, rngs=rngs)]) if mode else None

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Decoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, pd, *, rngs: nnx.Rngs):
        mult = cfg.dim_mult
        dims = [cfg.base_dim * u for u in (mult[-1], *mult[::-1])]
        temperal_upsample = cfg.temperal_downsample[::-1]
        self.conv_in = CausalConv(cfg.z_dim, dims[0], 3, pd, rngs=rngs)
        self.mid_block = MidBlock(dims[0], pd, rngs=rngs)
        blocks = []
        for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
            din = din // 2 if i > 0 else din  # each upsampler halves the channels
            mode = None
            if i != len(mult) - 1:
                mode = "upsample3d" if temperal_upsample[i] else "upsample2d"
            blocks.append(UpBlock(din, dout, cfg.num_res_blocks, mode, pd, rngs=rngs))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = ChannelRMSNorm(dims[-1], pd, rngs=rngs)
        self.conv_out = CausalConv(dims[-1], cfg.input_channels, 3, pd, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.norm_out(x)))


class QwenImageVAE(nnx.Module):
    HF_RENAMES = ((".resample_conv.", ".resample.1."),)

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        self.encoder = Encoder(cfg, pd, rngs=rngs)
        self.quant_conv = CausalConv(2 * cfg.z_dim, 2 * cfg.z_dim, 1, pd, rngs=rngs)
        self.post_quant_conv = CausalConv(cfg.z_dim, cfg.z_dim, 1, pd, rngs=rngs)
        self.decoder = Decoder(cfg, pd, rngs=rngs)

    def encode(self, images: jax.Array) -> jax.Array:
        """images [B, H, W, C] in [-1, 1] (H, W multiples of the scale factor) -> posterior mean
        latents [B, H/8, W/8, z_dim] (unnormalised)."""
        f = self.cfg.scale_factor
        if images.ndim != 4 or images.shape[1] % f or images.shape[2] % f or images.shape[3] != self.cfg.input_channels:
            raise ValueError(f"VAE.encode: images of shape {images.shape}; expected [B, H, W, "
                             f"{self.cfg.input_channels}] with H and W multiples of {f}")
        moments = self.quant_conv(self.encoder(images.astype(jnp.dtype(self.cfg.dtype))))
        return moments[..., : self.cfg.z_dim]

    def decode(self, latents: jax.Array) -> jax.Array:
        """latents [B, h, w, z_dim] -> images [B, 8h, 8w, C] clamped to [-1, 1]."""
        x = self.decoder(self.post_quant_conv(latents.astype(jnp.dtype(self.cfg.dtype))))
        return jnp.clip(x, -1.0, 1.0)

    def normalize(self, latents: jax.Array) -> jax.Array:
        mean, std = (jnp.asarray(v, latents.dtype) for v in (self.cfg.latents_mean, self.cfg.latents_std))
        return (latents - mean) / std

    def denormalize(self, latents: jax.Array) -> jax.Array:
        """The inverse of `normalize`, in the pipeline's order: latents / (1 / std) + mean."""
        mean = jnp.asarray(self.cfg.latents_mean, latents.dtype)
        inv_std = 1.0 / jnp.asarray(self.cfg.latents_std, latents.dtype)
        return latents / inv_std + mean
