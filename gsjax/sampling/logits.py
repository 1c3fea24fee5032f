"""Pure functions from logits to sampled tokens and their log-probabilities."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 is greedy; top_k 0 and top_p 1.0 switch those filters off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


def _top_p_mask(sorted_logits: jax.Array, top_p: float) -> jax.Array:
    """Keep the smallest prefix of descending-sorted logits whose probability reaches top_p."""
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
    return before < top_p


def _categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    if key.ndim == 0:
        return jax.random.categorical(key, logits, axis=-1)
    return jax.vmap(lambda k, row: jax.random.categorical(k, row))(key, logits)  # one key per row


class Draw(NamedTuple):
    """What `sample` draws: tokens [B] int32 and two log-probabilities [B] fp32 of each."""

    tokens: jax.Array
    # Under softmax(logits / temperature), before top-k / top-p truncation: the distribution the
    # policy defines, which is what the learner recomputes (under the plain softmax when greedy).
    logprobs: jax.Array
    # Under the distribution the token was actually drawn from (after temperature, top-k and top-p,
    # renormalised): the behaviour policy of an importance correction; 0 when greedy (a sure draw).
    behavior_logprobs: jax.Array


def sample(logits: jax.Array, key: jax.Array, params: SamplingParams) -> Draw:
    """Sample one token per row from fp32 `logits` [B, V], with one key for the batch or a key per
    row (`key` of shape [B]: a row's draw then depends on its own key only)."""
    logits = logits.astype(jnp.float32)
    if params.temperature == 0.0:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logprobs = jax.nn.log_softmax(logits, axis=-1)
        return Draw(tokens, jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0], jnp.zeros(tokens.shape))

    scaled = logits / params.temperature
    logprobs = jax.nn.log_softmax(scaled, axis=-1)
    behavior = None  # without truncation, the token is drawn from the policy's own distribution
    if params.top_k == 0 and params.top_p >= 1.0:
        tokens = _categorical(key, scaled).astype(jnp.int32)
    else:
        k = params.top_k or scaled.shape[-1]
        top_logits, top_ids = jax.lax.top_k(scaled, min(k, scaled.shape[-1]))  # sorted, descending
        if params.top_p < 1.0:
            top_logits = jnp.where(_top_p_mask(top_logits, params.top_p), top_logits, -jnp.inf)
        choice = _categorical(key, top_logits)
        tokens = jnp.take_along_axis(top_ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
        behavior = jnp.take_along_axis(jax.nn.log_softmax(top_logits, axis=-1), choice[:, None], axis=-1)[:, 0]
    lp = jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
    return Draw(tokens, lp, lp if behavior is None else behavior)


def token_logprob(logits: jax.Array, tokens: jax.Array, params: SamplingParams) -> jax.Array:
    """Log-probability of given `tokens` [B] under the distribution `sample` reports for them."""
    logits = logits.astype(jnp.float32)
    if params.temperature > 0.0:
        logits = logits / params.temperature
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]
