"""Tiny random Qwen-Image pipelines created by diffusers (PyTorch), shared with the benchmark."""

from gsjax.bench.diffusion import SCHEDULER, TINY_TRANSFORMER, TINY_VAE, make_diffusers_parts, save_parts

__all__ = ["SCHEDULER", "TINY_TRANSFORMER", "TINY_VAE", "make_diffusers_parts", "save_parts"]
