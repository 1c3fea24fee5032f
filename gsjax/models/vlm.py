"""A vision tower in front of a Qwen decoder: what Qwen3-VL (the policy) and Qwen2.5-VL (the
generator's text encoder) share.

An image enters as a run of `<|image_pad|>` tokens whose embeddings are replaced by the tower's
merged patch embeddings; a tower with deepstack features (Qwen3-VL) also adds them to the image
tokens' hidden states after the first decoder layers. Subclasses build `visual` (the tower, whose
`encode_images` returns merged embeddings and deepstack features, possibly none) and
`language_model` (a `gsjax.models.qwen3.Qwen3`), and set `vl_cfg` / `cfg`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gsjax.models.interface import ModelInput, VisionEmbeds, VisionInput
from gsjax.models.qwen3 import KVCache
from gsjax.parallel import constrain


class VisionLanguageModel(nnx.Module):
    """The model seam (`CausalLM`, `VisionLM`) for a tower + decoder."""

    vl_cfg: Any
    cfg: Any

    def encode_images(self, patches: jax.Array, layout) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    def head(self) -> jax.Array:
        return self.language_model.head()

    def logits(self, hidden: jax.Array) -> jax.Array:
        return self.language_model.logits(hidden)

    def _embed(self, inputs: ModelInput):
        """Input embeddings with the images' merged embeddings at their tokens, and the deepstack
        features with where they go (None without images or without deepstack)."""
        if not isinstance(inputs, ModelInput):
            raise TypeError(f"expected a gsjax.models.interface.ModelInput, got {type(inputs).__name__}")
        x = self.language_model.embed_tokens(inputs.tokens)
        v = inputs.vision
        if v is None:
            return x, None
        if isinstance(v, VisionEmbeds):
            embeds, deepstack = v.embeds, v.deepstack
        else:
            embeds, deepstack = self.encode_images(v.patches, v.layout)
        index = v.token_index
        picked = jnp.take(embeds, jnp.maximum(index, 0), axis=0).astype(x.dtype)
        x = constrain(jnp.where((index >= 0)[..., None], picked, x), ("act_batch", "act_len", "act_embed"))
        return x, ((deepstack, index) if deepstack.shape[0] else None)

    def hidden_states(self, inputs: ModelInput) -> jax.Array:
        x, deepstack = self._embed(inputs)
        return self.language_model.decode(x, inputs.positions, inputs.segment_ids, deepstack)

    def __call__(self, inputs: ModelInput) -> jax.Array:
        return constrain(self.logits(self.hidden_states(inputs)), ("act_batch", "act_len", "act_vocab"))

    def forward_cached(self, inputs: ModelInput, cache: KVCache, starts: jax.Array, rows: jax.Array | None = None
                       ) -> tuple[jax.Array, KVCache]:
        x, deepstack = self._embed(inputs)
        return self.language_model.decode_cached(x, cache, starts, rows, inputs.positions, deepstack)


def image_token_index(tokens: np.ndarray, image_token_id: int, num_embeddings: int) -> np.ndarray:
    """[B, T] index of each image token's merged embedding (image tokens numbered in row-major
    order, which is the order of the rows' images), -1 for every other token."""
    is_image = np.asarray(tokens) == image_token_id
    count = int(is_image.sum())
    if count != num_embeddings:
        raise ValueError(f"the tokens hold {count} image tokens but the images give {num_embeddings} embeddings")
    index = np.full(is_image.shape, -1, np.int32)
    index[is_image] = np.arange(count, dtype=np.int32)
    return index


def vision_input(tokens: np.ndarray, pixel_values: np.ndarray, grids: np.ndarray, cfg,
                 layout_fn: Callable[..., Any], pad_to: int | None = None) -> VisionInput:
    """The `VisionInput` of a batch `tokens` [B, T] whose images (in row-major order) are the
    processor's `pixel_values` rows with patch grids `grids` [n, 3]; patches padded to `pad_to`;
    `layout_fn(grids, vision_cfg, pad_to)` is the tower's host-side layout."""
    grids = np.asarray(grids, np.int64).reshape(-1, 3)
    layout = layout_fn(grids, cfg.vision, pad_to=pad_to)
    patches = np.asarray(pixel_values, np.float32)
    total = int(np.prod(grids, axis=-1).sum()) if len(grids) else 0
    if patches.shape[0] != total:
        raise ValueError(f"pixel_values has {patches.shape[0]} patch rows; the grids {grids.tolist()} need {total}")
    size = pad_to if pad_to is not None else total
    patches = np.pad(patches, ((0, size - total), (0, 0)))
    index = image_token_index(tokens, cfg.image_token_id, total // cfg.vision.spatial_merge_size ** 2)
    return VisionInput(jnp.asarray(patches), layout.on_device(), jnp.asarray(index))
