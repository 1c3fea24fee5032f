"""Tiny random Qwen-Image pipelines created by diffusers (PyTorch) for parity tests and the bench."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

TINY_TRANSFORMER = dict(num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                        axes_dims_rope=(4, 6, 6))
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])
# Qwen-Image's own scheduler settings.
SCHEDULER = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, max_image_seq_len=8192, shift_terminal=0.02)


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Random init leaves norm weights at 1 and biases at 0; perturb them so the tests see them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "gamma" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def make_diffusers_parts(seed: int = 0, transformer: dict | None = None, vae: dict | None = None):
    torch.manual_seed(seed)
    t = _perturb(QwenImageTransformer2DModel(**{**TINY_TRANSFORMER, **(transformer or {})}))
    v = _perturb(AutoencoderKLQwenImage(**{**TINY_VAE, **(vae or {})}))
    return t, v, FlowMatchEulerDiscreteScheduler(**SCHEDULER)


def save_parts(parts, folder: Path, **kw) -> Path:
    t, v, s = parts
    t.save_pretrained(folder / "transformer", **kw)
    v.save_pretrained(folder / "vae", **kw)
    s.save_pretrained(folder / "scheduler")
    return folder
