"""Pure functions from a decoder pass to per-token log-probabilities and losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gsjax.models.qwen3 import Qwen3


def token_logprobs(
    model: Qwen3,
    tokens: jax.Array,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    temperature: float = 1.0,
) -> jax.Array:
    """log p(tokens[:, t] | tokens[:, :t]) for t >= 1, shape [B, T]; position 0 gets 0.

    Aligned with the tokens so a per-token loss mask of the same shape applies directly. With a
    temperature the logits are divided by it first, as the sampler does.
    """
    logits = model(tokens, positions, segment_ids)[:, :-1] / temperature
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.pad(picked, ((0, 0), (1, 0)))


def masked_mean_nll(logprobs: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean negative log-likelihood over tokens where mask is 1 (0 if the mask is empty)."""
    mask = mask.astype(jnp.float32)
    return -(logprobs * mask).sum() / jnp.maximum(mask.sum(), 1.0)
