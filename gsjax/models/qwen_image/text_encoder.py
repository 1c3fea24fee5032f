"""Prompt -> embeddings for Qwen-Image: the last hidden states of a Qwen2.5-VL language model.

Qwen-Image conditions on Qwen2.5-VL-7B's final (normed) hidden states of the prompt wrapped in a
chat template, with the template's system prefix dropped. For text-only input Qwen2.5-VL's M-RoPE
uses equal temporal/height/width positions, which is plain 1D RoPE, so gsjax's Qwen decoder with
the Qwen2 layout (`gsjax.models.qwen3.Qwen3`, family "qwen2") computes the same states.

Not here (see docs/qwen_image.md): the vision tower, so reference images are not shown to the text
encoder (the Edit-Plus template's "Picture i: <|image_pad|>" parts are left out); they still
condition the transformer through their VAE latents. Anything with `encode(prompts) ->
PromptEmbeds` can stand in, and the pipeline accepts precomputed `PromptEmbeds` directly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gsjax.models.interface import ModelInput
from gsjax.models.qwen3 import Qwen3
from gsjax.models.qwen_image.pipeline import PromptEmbeds
from gsjax.tokenizer import Tokenizer

EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _hidden(graphdef, state, tokens, segments):
    return nnx.merge(graphdef, state).hidden_states(ModelInput(tokens, segment_ids=segments))


class QwenTextEncoder:
    """`encode(prompts)` -> PromptEmbeds [B, L, hidden] with the template prefix dropped."""

    def __init__(self, model: Qwen3, tokenizer: Tokenizer, template: str = EDIT_TEMPLATE, *,
                 max_length: int = 1024, bucket: int = 64):
        if "{}" not in template:
            raise ValueError("the prompt template needs a '{}' where the prompt goes")
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.max_length, self.bucket = max_length, bucket
        # The reference hard-codes 64 for this template with Qwen's tokenizer; counted here so any
        # tokenizer drops exactly its own encoding of the system prefix.
        self.drop = len(tokenizer.encode(template.split("{}")[0]))
        self._split = nnx.split(model)

    def encode(self, prompts: Sequence[str]) -> PromptEmbeds:
        ids = [self.tokenizer.encode(self.template.format(p))[: self.drop + self.max_length] for p in prompts]
        longest = max(len(i) for i in ids)
        length = -(-longest // self.bucket) * self.bucket  # bucketed: few recompilations
        tokens = np.zeros((len(ids), length), np.int32)
        segments = np.zeros((len(ids), length), np.int32)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)], segments[row, : len(seq)] = seq, 1
        hidden = _hidden(self._split[0], self._split[1], jnp.asarray(tokens), jnp.asarray(segments))
        keep = longest - self.drop
        embeds = np.asarray(hidden[:, self.drop: longest], np.float32)
        mask = segments[:, self.drop: self.drop + keep]
        return PromptEmbeds(embeds * mask[..., None], mask)
