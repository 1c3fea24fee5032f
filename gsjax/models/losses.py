"""Pure functions from a decoder pass to per-token log-probabilities and losses.

Log-probabilities of the next token can be computed in vocabulary chunks (`vocab_chunk`), so the
[B, T, vocab] logits never exist at once: a scan over chunks keeps a running max and sum of
exponentials (and the target's logit), and each chunk's logits are recomputed in the backward
pass instead of being stored. Chunk j holds the vocabulary ids j, n + j, 2n + j, ... (n chunks),
so a vocabulary sharded over `tp` stays sharded the same way within every chunk.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gsjax.models.interface import CausalLM, ModelInput


def target_logprobs(hidden: jax.Array, head: jax.Array, targets: jax.Array, *, temperature: float = 1.0,
                    vocab_chunk: int = 0) -> jax.Array:
    """log softmax(hidden @ head / temperature)[targets]: hidden [..., E], head [E, V], targets
    [...] int -> [...] fp32. `vocab_chunk` > 0 bounds the logits held at once to [..., chunk]."""
    v = head.shape[-1]
    if vocab_chunk <= 0 or vocab_chunk >= v:
        logits = jnp.einsum("...e,ev->...v", hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32)
        logits = logits / temperature if temperature != 1.0 else logits
        picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)

    n = math.ceil(v / vocab_chunk)  # chunks
    width = math.ceil(v / n)  # ids per chunk
    head = jnp.pad(head, ((0, 0), (0, n * width - v))) if n * width != v else head
    # id = a * n + j  ->  chunk j, column a; moved so the scan runs over the chunks.
    chunks = jnp.moveaxis(head.reshape(head.shape[0], width, n), 2, 0)  # [n, E, width]
    ids = jnp.arange(width) * n  # chunk j's ids are ids + j
    target_chunk, target_col = targets % n, targets // n

    @jax.checkpoint  # keep only the carry: each chunk's logits are recomputed for the gradient
    def body(carry, xs):
        top, total, picked = carry
        w, j = xs
        logits = jnp.einsum("...e,ev->...v", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)
        logits = logits / temperature if temperature != 1.0 else logits
        logits = jnp.where(ids + j < v, logits, -jnp.inf)  # padding ids of the last columns
        new_top = jax.lax.stop_gradient(jnp.maximum(top, logits.max(axis=-1)))
        total = total * jnp.exp(top - new_top) + jnp.exp(logits - new_top[..., None]).sum(axis=-1)
        hit = jnp.take_along_axis(logits, target_col[..., None], axis=-1)[..., 0]
        picked = jnp.where(target_chunk == j, hit, picked)
        return (new_top, total, picked), None

    shape = targets.shape
    init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))
    (top, total, picked), _ = jax.lax.scan(body, init, (chunks, jnp.arange(n)))
    return picked - (top + jnp.log(total))


def token_logprobs(model: CausalLM, inputs: ModelInput, *, temperature: float = 1.0, vocab_chunk: int = 0) -> jax.Array:
    """log p(tokens[:, t] | tokens[:, :t]) for t >= 1 of the input's tokens, shape [B, T];
    position 0 gets 0.

    Aligned with the tokens so a per-token loss mask of the same shape applies directly (in a
    packed row, the first token of each segment is scored against the previous segment: its mask
    is 0). With a temperature the logits are divided by it first, as the sampler does.
    """
    hidden = model.hidden_states(inputs)
    tokens = inputs.tokens
    # Score every position against the next token (the last one against a dummy 0), then shift
    # the small [B, T] result.
    targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
    next_logp = target_logprobs(hidden, model.head(), targets, temperature=temperature, vocab_chunk=vocab_chunk)
    return jnp.pad(next_logp[:, :-1], ((0, 0), (1, 0)))


def masked_mean_nll(logprobs: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean negative log-likelihood over tokens where mask is 1 (0 if the mask is empty)."""
    mask = mask.astype(jnp.float32)
    return -(logprobs * mask).sum() / jnp.maximum(mask.sum(), 1.0)
