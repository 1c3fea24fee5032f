"""The model seam: one input type and one protocol that the sampler, learner, losses, policy folders
and checkpoint I/O depend on, so a text-only decoder (`gsjax.models.qwen3.Qwen3`) and a
vision-language one (`gsjax.models.qwen3_vl.Qwen3VL`) plug in the same way.

`ModelInput` is a pytree, so it crosses into jitted code as one argument:
- `tokens` [B, T] int32;
- `positions`: rotary positions, [B, T] (text) or [3, B, T] (multimodal RoPE: temporal, height,
  width rows; equal rows for text tokens). None means 0..T-1 in a full pass, and the cache offset
  in a cached pass. In a cached pass they set only the rotation: where a token is written in the
  cache is always `starts + arange(T)`;
- `segment_ids` [B, T]: packing (0 = padding), full passes only;
- `vision`: the images entering this pass, or None.

`VisionInput` holds what the vision tower needs as fixed-shape arrays, computed on the host:
the patches (padded to a bucket), the tower's per-patch layout (a pytree of arrays whose shape
depends only on the bucket), and for every token the index of the merged image embedding that
replaces its `<|image_pad|>` embedding (-1 for every other token).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np


class VisionInput(NamedTuple):
    patches: jax.Array  # [P, patch_dim]: the processor's pixel rows, padded to a bucket
    layout: Any  # the vision tower's per-patch arrays (a pytree)
    token_index: jax.Array  # [B, T] int32: merged-embedding index per image token, -1 elsewhere


class VisionEmbeds(NamedTuple):
    """Images already through the vision tower (the sampler encodes an observation's images once
    and prefills from these)."""

    embeds: jax.Array  # [N, embed] merged image embeddings
    deepstack: jax.Array  # [k, N, embed] deepstack features
    token_index: jax.Array  # [B, T] int32: row of `embeds` per image token, -1 elsewhere


class Pixels(NamedTuple):
    """Images on the host as the processor gives them (`gsjax.data.images.preprocess`), in
    token-stream order: what a trajectory keeps of what its policy saw."""

    values: np.ndarray  # [P, patch_dim] float32 pixel rows
    grids: np.ndarray  # [n, 3] int patch grids (t, h, w)


class ModelInput(NamedTuple):
    tokens: jax.Array
    positions: jax.Array | None = None
    segment_ids: jax.Array | None = None
    vision: VisionInput | VisionEmbeds | None = None


@runtime_checkable
class CausalLM(Protocol):
    """What every policy model provides. `cfg` is its decoder's `Qwen3Config` (layers, heads,
    vocabulary, dtypes, how to run): what the sampler's cache and the learner's settings need."""

    cfg: Any

    def hidden_states(self, inputs: ModelInput) -> jax.Array:
        """Final-norm hidden states [B, T, embed] of a full causal pass."""

    def head(self) -> jax.Array:
        """The output projection [embed, vocab]."""

    def logits(self, hidden: jax.Array) -> jax.Array:
        """fp32 logits from hidden states [..., embed]."""

    def __call__(self, inputs: ModelInput) -> jax.Array:
        """fp32 logits [B, T, vocab] of a full causal pass."""

    def forward_cached(self, inputs: ModelInput, cache: Any, starts: jax.Array,
                       rows: jax.Array | None = None) -> tuple[jax.Array, Any]:
        """Hidden states [B, T, embed] of tokens written at offsets `starts` [B] of cache slots
        `rows` [B] (None: row b is slot b), and the updated cache."""


@runtime_checkable
class VisionLM(CausalLM, Protocol):
    """A policy that sees images: `vl_cfg` has its vision settings and token ids."""

    vl_cfg: Any

    def encode_images(self, patches: jax.Array, layout: Any) -> tuple[jax.Array, jax.Array]:
        """(merged embeddings [N, embed], deepstack features [k, N, embed]) of padded patches."""
