"""Prompt (+ reference images) -> embeddings for Qwen-Image-Edit: Qwen2.5-VL's last hidden states.

    encoder = QwenTextEncoder.from_pretrained("/ckpt/Qwen-Image-Edit-2509", mesh, dtype="bfloat16")
    embeds = encoder.encode(["make the fox red"], images=[[fox_photo]])

As diffusers' QwenImageEditPlusPipeline computes them (`_get_qwen_prompt_embeds`, 0.42.1):
1. Each reference image is resized (Lanczos, aspect kept) to about `condition_area` pixels (the
   pipeline's CONDITION_IMAGE_SIZE, 384^2), sides rounded to multiples of 32 (its
   `calculate_dimensions`), then run through the Qwen2.5-VL image processor
   (`gsjax.data.images.preprocess`: smart_resize to multiples of 28, bicubic, CLIP mean/std,
   14-pixel patches).
2. The text is the Edit template around "Picture 1: <|vision_start|><|image_pad|><|vision_end|>
   Picture 2: ..." followed by the prompt, each `<|image_pad|>` repeated once per merged token of
   its image, as the processor expands it.
3. Qwen2.5-VL runs on it: the vision tower's merged embeddings replace the `<|image_pad|>`
   embeddings, and the decoder uses multimodal RoPE positions (`qwen2_5_vl.rope_positions`).
4. The final (normed) hidden states are kept without the template's system prefix: diffusers drops
   a fixed 64 tokens, the length of that prefix with Qwen's tokenizer; here it is counted with the
   tokenizer in use, so a test tokenizer drops exactly its own prefix.

Positions: transformers 5 computes Qwen2.5-VL's multimodal positions only when it is given
`mm_token_type_ids`, which diffusers 0.42.1 does not pass (diffusers issue #14194), so diffusers
on transformers 5 gives the image tokens plain 1-D positions. Here the positions are what the
model computes when it is given them, and what transformers 4 computed from the token ids, which
is how Qwen-Image was trained and run at release.

A text-only prompt (or a text-only language model, e.g. a Qwen2ForCausalLM folder holding the
Qwen2.5-VL decoder's weights) runs the decoder alone, as before the tower existed; a model without
a tower cannot see reference images, so they are left out of its template (logged once). Anything
with `encode(prompts, images=None) -> PromptEmbeds` can stand in, and the pipeline accepts
precomputed `PromptEmbeds` directly.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from PIL import Image

from gsjax.data.images import ImageProcessorConfig, expand_image_tokens, preprocess
from gsjax.models import hf_io
from gsjax.models.interface import ModelInput
from gsjax.models.layout import CheckpointError
from gsjax.models.qwen2_5_vl import ARCHITECTURE, Qwen25VL, load_model, rope_positions, vision_input
from gsjax.models.qwen3 import Qwen3
from gsjax.models.qwen_image.pipeline import PromptEmbeds, fit_area
from gsjax.tokenizer import Tokenizer

log = logging.getLogger(__name__)

EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
IMAGE_PROMPT = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"  # one per reference, numbered from 1
CONDITION_AREA = 384 * 384  # diffusers' CONDITION_IMAGE_SIZE
# Qwen2.5-VL's preprocessor_config.json (the Qwen-Image folders' processor/ holds the same values).
QWEN2_5_VL_PROCESSOR = ImageProcessorConfig(
    patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=56 * 56, max_pixels=12_845_056,
    image_mean=(0.48145466, 0.4578275, 0.40821073), image_std=(0.26862954, 0.26130258, 0.27577711),
)

ImageLike = Image.Image | np.ndarray


def condition_image(image: ImageLike, area: int = CONDITION_AREA) -> Image.Image:
    """A reference as the pipeline hands it to the VL processor: resized with Lanczos to about
    `area` pixels, aspect kept, sides multiples of 32 (diffusers' calculate_dimensions and
    VaeImageProcessor.resize; the image keeps its mode, the processor converts it to RGB)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"a reference image must be a PIL image or a uint8 array, got {type(image).__name__}")
    width, height = fit_area(area, image.size[0] / image.size[1])
    return image.resize((width, height), Image.Resampling.LANCZOS)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _hidden(graphdef, state, tokens, segments):
    return nnx.merge(graphdef, state).hidden_states(ModelInput(tokens, segment_ids=segments))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _hidden_vl(graphdef, state, tokens, positions, segments, vision):
    return nnx.merge(graphdef, state).hidden_states(ModelInput(tokens, positions, segments, vision))


def _bucket(n: int, size: int) -> int:
    return max(size, -(-n // size) * size)


class QwenTextEncoder:
    """`encode(prompts, images)` -> PromptEmbeds [B, L, hidden] with the template prefix dropped."""

    def __init__(self, model: Qwen25VL | Qwen3, tokenizer: Tokenizer, template: str = EDIT_TEMPLATE, *,
                 max_length: int = 1024, bucket: int = 64, processor: ImageProcessorConfig = QWEN2_5_VL_PROCESSOR,
                 condition_area: int = CONDITION_AREA, patch_bucket: int = 1024):
        if "{}" not in template:
            raise ValueError("the prompt template needs a '{}' where the prompt goes")
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.max_length, self.bucket, self.patch_bucket = max_length, bucket, patch_bucket
        self.processor, self.condition_area = processor, condition_area
        # The reference hard-codes 64 for this template with Qwen's tokenizer; counted here so any
        # tokenizer drops exactly its own encoding of the system prefix.
        self.drop = len(tokenizer.encode(template.split("{}")[0]))
        self._lm = nnx.split(model.language_model if isinstance(model, Qwen25VL) else model)
        self._vl = nnx.split(model) if isinstance(model, Qwen25VL) else None
        self._warned = False
        if isinstance(model, Qwen25VL):
            self._check_vision(model)

    def _check_vision(self, model: Qwen25VL) -> None:
        cfg, p = model.vl_cfg, self.processor
        pairs = {"patch_size": (p.patch_size, cfg.vision.patch_size),
                 "temporal_patch_size": (p.temporal_patch_size, cfg.vision.temporal_patch_size),
                 "merge_size": (p.merge_size, cfg.vision.spatial_merge_size)}
        for name, (ours, tower) in pairs.items():
            if ours != tower:
                raise ValueError(f"image processor {name}={ours} but the vision tower's is {tower}")
        pad = self.tokenizer.token_to_id("<|image_pad|>")
        if pad != cfg.image_token_id:
            raise ValueError(f"the tokenizer's <|image_pad|> is id {pad} but the model's image_token_id is "
                             f"{cfg.image_token_id}")
        if self.patch_bucket % cfg.vision.merge_unit:
            raise ValueError(f"patch_bucket={self.patch_bucket} must be a multiple of spatial_merge_size**2 = "
                             f"{cfg.vision.merge_unit}")

    @property
    def sees_images(self) -> bool:
        """Whether reference images reach the model (a Qwen2.5-VL with its vision tower)."""
        return self._vl is not None

    @classmethod
    def from_pretrained(cls, folder: str | Path, mesh: Mesh | None = None, *, dtype: str | None = None,
                        **kw: Any) -> QwenTextEncoder:
        """The text encoder of a Qwen-Image pipeline folder (its text_encoder/, tokenizer/ and
        processor/) or a text-encoder folder itself: a `Qwen2_5_VLForConditionalGeneration`
        (with the vision tower) or a causal-LM folder (Qwen2 layout, text only). The tokenizer is
        the first tokenizer.json found in the text-encoder folder, tokenizer/ or processor/; the
        image processor's settings come from processor/ (or the text-encoder folder's)
        preprocessor_config.json, else Qwen2.5-VL's."""
        folder = Path(folder)
        encoder_dir = folder / "text_encoder" if (folder / "text_encoder" / "config.json").is_file() else folder
        config = hf_io.read_json(encoder_dir / "config.json", "a Qwen2.5-VL or causal-LM text-encoder folder")
        run = {"dtype": dtype, "param_dtype": dtype} if dtype else {}
        if ARCHITECTURE in (config.get("architectures") or []):
            model: Qwen25VL | Qwen3 = load_model(encoder_dir, mesh, **run)
        else:
            model = hf_io.load_model(encoder_dir, mesh, **run)
            if not isinstance(model, Qwen3):
                raise CheckpointError(f"{encoder_dir / 'config.json'}: a {type(model).__name__} is no Qwen-Image text "
                                      f"encoder; expected {ARCHITECTURE} or a causal LM")
        places = [encoder_dir, folder / "tokenizer", folder / "processor"]
        found = next((p for p in places if (p / "tokenizer.json").is_file()), None)
        if found is None:
            raise CheckpointError(f"no tokenizer.json in {', '.join(map(str, places))} (a slow tokenizer's "
                                  "vocab.json/merges.txt can be converted by saving transformers' fast tokenizer)")
        if "processor" not in kw:
            for p in (folder / "processor", encoder_dir):
                if (p / "preprocessor_config.json").is_file():
                    path = p / "preprocessor_config.json"
                    kw["processor"] = ImageProcessorConfig.from_hf(hf_io.read_json(path), str(path))
                    break
        return cls(model, Tokenizer.from_pretrained(found), **kw)

    def _row(self, index: int, prompt: str, refs: Sequence[ImageLike]) -> tuple[list[int], np.ndarray | None,
                                                                                np.ndarray | None]:
        """One prompt's token ids (at most drop + max_length) and its images' pixel rows and grids."""
        pixels = grids = None
        if refs:
            pixels, grids = preprocess([condition_image(r, self.condition_area) for r in refs], self.processor)
            prefix = "".join(IMAGE_PROMPT.format(i + 1) for i in range(len(refs)))
            text = expand_image_tokens(self.template.format(prefix + prompt), grids, self.processor.merge_size)
        else:
            text = self.template.format(prompt)
        ids = self.tokenizer.encode(text)
        kept = ids[: self.drop + self.max_length]
        if len(kept) < len(ids):  # diffusers' Edit-Plus pipeline never truncates; this cap is gsjax's
            log.warning("prompt %d: %d tokens after the template prefix, cut to max_length=%d", index,
                        len(ids) - self.drop, self.max_length)
        if refs:
            image_tokens = int(np.prod(grids, axis=1).sum()) // self.processor.merge_size**2
            if kept.count(self.model.vl_cfg.image_token_id) != image_tokens:
                raise ValueError(f"prompt {index}: its {len(refs)} reference image(s) take {image_tokens} tokens, "
                                 f"which max_length={self.max_length} cuts into")
        return kept, pixels, grids

    def encode(self, prompts: Sequence[str], images: Sequence[Sequence[ImageLike]] | None = None) -> PromptEmbeds:
        """Embeddings of each prompt with its reference images (`images[i]`, a list of PIL images
        or uint8 arrays, possibly empty; None: text only). Rows are padded to the longest; the
        mask is 1 on real tokens."""
        if images is None:
            images = [()] * len(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} image lists; expected one list per prompt")
        if any(images) and not self.sees_images:
            if not self._warned:
                log.warning("the text encoder has no vision tower: reference images are left out of its prompts")
                self._warned = True
            images = [()] * len(prompts)
        rows = [self._row(i, p, refs) for i, (p, refs) in enumerate(zip(prompts, images))]
        longest = max(len(ids) for ids, _, _ in rows)
        length = _bucket(longest, self.bucket)  # bucketed: few recompilations
        tokens = np.zeros((len(rows), length), np.int32)
        segments = np.zeros((len(rows), length), np.int32)
        for row, (ids, _, _) in enumerate(rows):
            tokens[row, : len(ids)], segments[row, : len(ids)] = ids, 1
        if any(grids is not None for _, _, grids in rows):
            hidden = self._run_vl(rows, tokens, segments)
        else:
            hidden = _hidden(self._lm[0], self._lm[1], jnp.asarray(tokens), jnp.asarray(segments))
        keep = longest - self.drop
        embeds = np.asarray(hidden[:, self.drop: longest], np.float32)
        mask = segments[:, self.drop: self.drop + keep]
        return PromptEmbeds(embeds * mask[..., None], mask)

    def _run_vl(self, rows, tokens: np.ndarray, segments: np.ndarray) -> jax.Array:
        cfg = self.model.vl_cfg
        positions = np.broadcast_to(np.arange(tokens.shape[1]), (3, *tokens.shape)).copy()
        for row, (ids, _, grids) in enumerate(rows):
            if grids is not None:
                positions[:, row, : len(ids)] = rope_positions(ids, grids, cfg)[0]
        pixels = np.concatenate([p for _, p, g in rows if g is not None])
        grids = np.concatenate([g for _, _, g in rows if g is not None])
        vision = vision_input(tokens, pixels, grids, cfg, pad_to=_bucket(len(pixels), self.patch_bucket))
        return _hidden_vl(self._vl[0], self._vl[1], jnp.asarray(tokens), jnp.asarray(positions, jnp.int32),
                          jnp.asarray(segments), vision)
