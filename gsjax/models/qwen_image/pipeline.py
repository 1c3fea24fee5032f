"""The Qwen-Image-Edit-Plus sampling pipeline: reference images + prompt embeddings -> image.

    pipe = QwenImageEditPipeline.from_pretrained("/ckpt/Qwen-Image-Edit-2509", mesh=mesh, dtype="bfloat16")
    images = pipe.generate(refs, embeds, neg_embeds, num_steps=40, true_cfg_scale=4.0, seed=0)

What happens (as diffusers' QwenImageEditPlusPipeline does it):
1. Each reference image is resized to about `ref_area` pixels (multiples of 32, aspect kept),
   encoded by the VAE (posterior mean), normalised with latents_mean/std and packed 2x2 into tokens.
2. Noise of the output's latent size (from `seed`, or given) is packed the same way; the output
   size defaults to about `output_area` pixels with the last reference's aspect ratio.
3. One jitted function runs every denoising step in a `lax.fori_loop`: the transformer sees the
   noisy tokens followed by all reference tokens (each image its own RoPE frame); only the noisy
   tokens' velocity is kept. With true CFG the conditional and negative prompts go through the
   transformer as one batch of two, are combined as neg + s * (cond - neg) and rescaled per token
   to the conditional prediction's norm. The flow-matching Euler step follows.
4. The latents are unpacked, de-normalised and decoded.

Prompt embeddings come from a text encoder (`text_encoder.QwenTextEncoder`: the prompt with the
reference images, through Qwen2.5-VL) or are passed in directly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from PIL import Image

from gsjax.models import hf_io
from gsjax.models.qwen_image.layers import diffusers_layout
from gsjax.models.qwen_image.scheduler import (
    SchedulerConfig,
    euler_step,
    load_scheduler_config,
    schedule,
)
from gsjax.models.qwen_image.transformer import (
    ImgShapes,
    QwenImageTransformer,
    TransformerConfig,
    transformer_config_from_diffusers,
)
from gsjax.models.qwen_image.vae import QwenImageVAE, VAEConfig, vae_config_from_diffusers

WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"


# ----------------------------------------------------------------------------- latents <-> tokens


def pack_latents(latents: jax.Array) -> jax.Array:
    """[B, h, w, C] -> [B, (h/2)(w/2), 4C], a token's channels ordered (C, dy, dx) as diffusers packs."""
    b, h, w, c = latents.shape
    x = latents.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: jax.Array, h: int, w: int) -> jax.Array:
    """The inverse of `pack_latents` for a latent grid of h x w."""
    b, _, c4 = tokens.shape
    c = c4 // 4
    x = tokens.reshape(b, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h, w, c)


def fit_area(area: int, ratio: float, multiple: int = 32) -> tuple[int, int]:
    """(width, height) of about `area` pixels with width / height = ratio, rounded to `multiple`."""
    width = math.sqrt(area * ratio)
    height = width / ratio
    return round(width / multiple) * multiple, round(height / multiple) * multiple


def preprocess(image: Image.Image, width: int, height: int) -> np.ndarray:
    """An RGB image resized (Lanczos) to width x height, as float32 [H, W, 3] in [-1, 1]."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(image, np.float32) / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 pixels, as diffusers' postprocess rounds them."""
    return np.round(np.clip(images / 2 + 0.5, 0.0, 1.0) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- the jitted loop


def _pad_text(embeds: jax.Array, mask: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    pad = length - embeds.shape[1]
    return (jnp.pad(embeds, ((0, 0), (0, pad), (0, 0))), jnp.pad(mask.astype(bool), ((0, 0), (0, pad))))


@functools.partial(jax.jit, static_argnames=("graphdef", "img_shapes", "do_cfg"))
def denoise(graphdef, state, noise, ref_tokens, embeds, mask, neg_embeds, neg_mask, timesteps, sigmas, cfg_scale,
            *, img_shapes: ImgShapes, do_cfg: bool) -> jax.Array:
    """Every denoising step in one `lax.fori_loop`. noise [B, S, 4C] packed; ref_tokens
    [B, S_ref, 4C] (S_ref may be 0); embeds/mask the prompt, neg_* the negative prompt (used only
    when `do_cfg`); timesteps [n], sigmas [n + 1] from `scheduler.schedule`."""
    model = nnx.merge(graphdef, state)
    b, n_lat = noise.shape[:2]
    if do_cfg:
        length = max(embeds.shape[1], neg_embeds.shape[1])
        e1, m1 = _pad_text(embeds, mask, length)
        e2, m2 = _pad_text(neg_embeds, neg_mask, length)
        text, text_mask = jnp.concatenate([e1, e2]), jnp.concatenate([m1, m2])
    else:
        text, text_mask = embeds, mask.astype(bool)

    def step(i, x):
        tokens = jnp.concatenate([x, ref_tokens.astype(x.dtype)], axis=1)
        t = jnp.full((b,), timesteps[i], x.dtype) / 1000
        if do_cfg:
            v = model(jnp.concatenate([tokens, tokens]), text, text_mask, jnp.concatenate([t, t]), img_shapes)[:, :n_lat]
            cond, neg = v[:b], v[b:]
            comb = neg + cfg_scale * (cond - neg)
            v = comb * (jnp.linalg.norm(cond, axis=-1, keepdims=True) / jnp.linalg.norm(comb, axis=-1, keepdims=True))
        else:
            v = model(tokens, text, text_mask, t, img_shapes)[:, :n_lat]
        return euler_step(v, sigmas[i], sigmas[i + 1], x)

    return jax.lax.fori_loop(0, timesteps.shape[0], step, noise)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _encode(graphdef, state, images):
    vae = nnx.merge(graphdef, state)
    return pack_latents(vae.normalize(vae.encode(images)))


@functools.partial(jax.jit, static_argnames=("graphdef", "h", "w"))
def _decode(graphdef, state, tokens, h: int, w: int):
    vae = nnx.merge(graphdef, state)
    return vae.decode(vae.denormalize(unpack_latents(tokens, h, w)))


# ----------------------------------------------------------------------------- the pipeline


@dataclasses.dataclass(frozen=True)
class PromptEmbeds:
    """Text-encoder hidden states [B, L, D] and their mask [B, L] (1 = a real token)."""

    embeds: np.ndarray | jax.Array
    mask: np.ndarray | jax.Array

    def __post_init__(self) -> None:
        if self.embeds.ndim != 3 or tuple(self.mask.shape) != tuple(self.embeds.shape[:2]):
            raise ValueError(f"prompt embeddings {tuple(self.embeds.shape)} with mask {tuple(self.mask.shape)}: "
                             "expected [B, L, D] and [B, L]")


def _load_component(folder: Path, cls, cfg_fn, mesh: Mesh | None, overrides: dict[str, Any]):
    cfg = cfg_fn(hf_io.read_json(folder / "config.json", "a diffusers component folder"), str(folder / "config.json"),
                 **overrides)
    make = lambda: cls(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    layout = diffusers_layout(nnx.eval_shape(make), cls.HF_RENAMES)
    files = hf_io.file_index(folder, WEIGHTS, WEIGHTS_INDEX)
    return hf_io.load_tensors_into(make, folder, layout, files, mesh=mesh, param_dtype=cfg.param_dtype,
                                   what=f"{cls.__name__} {cfg}")


def _save_component(module, folder: Path, max_shard_bytes: int) -> None:
    tensors = hf_io.gather_tensors(module, diffusers_layout(module, type(module).HF_RENAMES))
    if jax.process_index() != 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(module.cfg.to_diffusers(), indent=2) + "\n")
    hf_io.write_safetensors(folder, tensors, max_shard_bytes=max_shard_bytes, single=WEIGHTS, index=WEIGHTS_INDEX)


def load_transformer(folder: str | Path, mesh: Mesh | None = None, **overrides: Any) -> QwenImageTransformer:
    return _load_component(Path(folder), QwenImageTransformer, transformer_config_from_diffusers, mesh, overrides)


def load_vae(folder: str | Path, mesh: Mesh | None = None, **overrides: Any) -> QwenImageVAE:
    return _load_component(Path(folder), QwenImageVAE, vae_config_from_diffusers, mesh, overrides)


class QwenImageEditPipeline:
    def __init__(
        self,
        transformer: QwenImageTransformer,
        vae: QwenImageVAE,
        scheduler: SchedulerConfig,
        text_encoder: Any = None,
        *,
        output_area: int = 1024 * 1024,
        ref_area: int = 1024 * 1024,
    ):
        if transformer.cfg.in_channels != 4 * vae.cfg.z_dim:
            raise ValueError(f"transformer in_channels {transformer.cfg.in_channels} != 4 * VAE z_dim {vae.cfg.z_dim}")
        self.transformer, self.vae, self.scheduler = transformer, vae, scheduler
        self.text_encoder = text_encoder
        self.output_area, self.ref_area = output_area, ref_area
        self._tr = nnx.split(transformer)
        self._vae = nnx.split(vae)

    # -- construction

    @classmethod
    def from_pretrained(cls, folder: str | Path, mesh: Mesh | None = None, *, dtype: str | None = None,
                        text_encoder: Any = None, **kw: Any) -> "QwenImageEditPipeline":
        """Load transformer/, vae/ and scheduler/ of a diffusers pipeline folder (single or sharded
        safetensors), placing the transformer on `mesh` by its logical axes."""
        folder = Path(folder)
        overrides = {"dtype": dtype, "param_dtype": dtype} if dtype else {}
        transformer = load_transformer(folder / "transformer", mesh, **overrides)
        vae = load_vae(folder / "vae", None)
        return cls(transformer, vae, load_scheduler_config(folder / "scheduler"), text_encoder, **kw)

    @classmethod
    def random(cls, transformer_cfg: TransformerConfig, vae_cfg: VAEConfig, scheduler: SchedulerConfig = SchedulerConfig(),
               seed: int = 0, **kw: Any) -> "QwenImageEditPipeline":
        """Random weights (tests, the tiny served generator)."""
        rngs = nnx.Rngs(seed)
        return cls(QwenImageTransformer(transformer_cfg, rngs=rngs), QwenImageVAE(vae_cfg, rngs=rngs), scheduler, **kw)

    def save_pretrained(self, folder: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> Path:
        """Write transformer/, vae/ and scheduler/ as diffusers' from_pretrained reads them."""
        folder = Path(folder)
        _save_component(self.transformer, folder / "transformer", max_shard_bytes)
        _save_component(self.vae, folder / "vae", max_shard_bytes)
        if jax.process_index() == 0:
            (folder / "scheduler").mkdir(parents=True, exist_ok=True)
            (folder / "scheduler" / "scheduler_config.json").write_text(
                json.dumps(self.scheduler.to_diffusers(), indent=2) + "\n")
        return folder

    # -- the steps

    @property
    def latent_multiple(self) -> int:
        """Pixel sizes are multiples of this (VAE scale factor x patch size)."""
        return self.vae.cfg.scale_factor * self.transformer.cfg.patch_size

    def encode_references(self, images: Sequence[np.ndarray]) -> tuple[jax.Array, ImgShapes]:
        """Preprocessed references ([H, W, 3] in [-1, 1], each its own size) -> packed tokens
        [1, S_ref, 4C] and their (1, h/2, w/2) shapes."""
        tokens, shapes = [], []
        for img in images:
            if img.ndim != 3 or img.shape[0] % self.latent_multiple or img.shape[1] % self.latent_multiple:
                raise ValueError(f"reference image of shape {img.shape}: expected [H, W, 3] with H and W "
                                 f"multiples of {self.latent_multiple}")
            tokens.append(_encode(self._vae[0], self._vae[1], jnp.asarray(img)[None]))
            f = self.vae.cfg.scale_factor * 2
            shapes.append((1, img.shape[0] // f, img.shape[1] // f))
        if not tokens:
            return jnp.zeros((1, 0, self.transformer.cfg.in_channels), jnp.float32), ()
        return jnp.concatenate(tokens, axis=1), tuple(shapes)

    def noise(self, seed: int, height: int, width: int, batch: int = 1) -> jax.Array:
        f = self.vae.cfg.scale_factor
        shape = (batch, height // f, width // f, self.vae.cfg.z_dim)
        return pack_latents(jax.random.normal(jax.random.key(seed), shape, jnp.float32))

    def sample(self, noise: jax.Array, height: int, width: int, ref_tokens: jax.Array, ref_shapes: ImgShapes,
               prompt: PromptEmbeds, negative: PromptEmbeds | None, *, num_steps: int,
               true_cfg_scale: float) -> jax.Array:
        """The denoised packed latents [B, S, 4C] (see `denoise`)."""
        f = self.latent_multiple
        out_shape = (1, height // f, width // f)
        if noise.shape[1] != out_shape[1] * out_shape[2]:
            raise ValueError(f"noise has {noise.shape[1]} tokens; a {width}x{height} output needs {out_shape[1] * out_shape[2]}")
        timesteps, sigmas = schedule(self.scheduler, num_steps, noise.shape[1])
        do_cfg = negative is not None and true_cfg_scale > 1
        b = noise.shape[0]
        ref = jnp.broadcast_to(ref_tokens, (b, *ref_tokens.shape[1:]))
        neg = negative if do_cfg else prompt
        return denoise(self._tr[0], self._tr[1], noise, ref, jnp.asarray(prompt.embeds), jnp.asarray(prompt.mask),
                       jnp.asarray(neg.embeds), jnp.asarray(neg.mask), jnp.asarray(timesteps), jnp.asarray(sigmas),
                       jnp.float32(true_cfg_scale), img_shapes=(out_shape, *ref_shapes), do_cfg=do_cfg)

    def decode(self, tokens: jax.Array, height: int, width: int) -> np.ndarray:
        """Packed latents -> images [B, H, W, 3] in [-1, 1]."""
        f = self.vae.cfg.scale_factor
        return np.asarray(_decode(self._vae[0], self._vae[1], tokens, h=height // f, w=width // f))

    def output_size(self, references: Sequence[Image.Image]) -> tuple[int, int]:
        """(width, height): about `output_area` pixels with the last reference's aspect ratio
        (square without references), rounded down to the latent multiple."""
        ratio = references[-1].size[0] / references[-1].size[1] if references else 1.0
        width, height = fit_area(self.output_area, ratio)
        m = self.latent_multiple
        return max(m, width // m * m), max(m, height // m * m)

    def generate(
        self,
        references: Sequence[Image.Image],
        prompt: PromptEmbeds | str,
        negative: PromptEmbeds | str | None = " ",
        *,
        num_steps: int = 40,
        true_cfg_scale: float = 4.0,
        seed: int = 0,
        size: tuple[int, int] | None = None,
        noise: jax.Array | None = None,
    ) -> np.ndarray:
        """uint8 images [B, H, W, 3]. Prompts are strings (needs a text encoder, which sees the
        references too, as diffusers encodes both prompts with them) or PromptEmbeds."""
        prompt = self._embed(prompt, references)
        negative = None if negative is None else self._embed(negative, references)
        width, height = size or self.output_size(references)
        refs = [preprocess(img, *fit_area(self.ref_area, img.size[0] / img.size[1])) for img in references]
        ref_tokens, ref_shapes = self.encode_references(refs)
        if noise is None:
            noise = self.noise(seed, height, width, batch=prompt.embeds.shape[0])
        latents = self.sample(noise, height, width, ref_tokens, ref_shapes, prompt, negative,
                              num_steps=num_steps, true_cfg_scale=true_cfg_scale)
        return to_uint8(self.decode(latents, height, width))

    def _embed(self, prompt: PromptEmbeds | str, references: Sequence[Image.Image]) -> PromptEmbeds:
        if isinstance(prompt, PromptEmbeds):
            return prompt
        if self.text_encoder is None:
            raise ValueError("this pipeline has no text encoder: pass PromptEmbeds instead of a prompt string")
        if not references:
            return self.text_encoder.encode([prompt])
        return self.text_encoder.encode([prompt], images=[list(references)])
