"""Qwen-Image in JAX: the MMDiT transformer, the VAE, the flow-matching scheduler and the
Edit-Plus sampling pipeline, loading and saving diffusers folders; the Qwen2.5-VL text encoder that
sees the reference images is `text_encoder.QwenTextEncoder`. See docs/qwen_image.md."""

from gsjax.models.qwen_image.pipeline import (
    PromptEmbeds,
    QwenImageEditPipeline,
    load_transformer,
    load_vae,
    pack_latents,
    unpack_latents,
)
from gsjax.models.qwen_image.scheduler import SchedulerConfig, schedule
from gsjax.models.qwen_image.transformer import QWEN_IMAGE_20B, QwenImageTransformer, TransformerConfig
from gsjax.models.qwen_image.vae import QwenImageVAE, VAEConfig

__all__ = [
    "QWEN_IMAGE_20B",
    "PromptEmbeds",
    "QwenImageEditPipeline",
    "QwenImageTransformer",
    "QwenImageVAE",
    "SchedulerConfig",
    "TransformerConfig",
    "VAEConfig",
    "load_transformer",
    "load_vae",
    "pack_latents",
    "schedule",
    "unpack_latents",
]
