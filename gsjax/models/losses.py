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
    logits = model(tokens, positions, segment_ids)
    if temperature != 1.0:
        logits = logits / temperature
    # Score every position against the next token (the last one against a dummy 0), then shift
    # the small [B, T] result instead of slicing the vocab-sized logits.
    targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    next_logp = picked - jax.nn.logsumexp(logits, axis=-1)
    return jnp.pad(next_logp[:, :-1], ((0, 0), (1, 0)))


def masked_mean_nll(logprobs: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean negative log-likelihood over tokens where mask is 1 (0 if the mask is empty)."""
    mask = mask.astype(jnp.float32)
    return -(logprobs * mask).sum() / jnp.maximum(mask.sum(), 1.0)
