"""Jitted sampling with a KV cache and slots."""

from gsjax.sampling.logits import SamplingParams, sample
from gsjax.sampling.sampler import FinishReason, Sampler, Turn

__all__ = ["FinishReason", "Sampler", "SamplingParams", "Turn", "sample"]
