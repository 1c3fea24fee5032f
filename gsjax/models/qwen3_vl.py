"""Qwen3-VL in Flax NNX: the vision tower (`qwen3_vl_vision`) in front of the Qwen3 decoder.

The policy of Gen-Searcher is Qwen3-VL-8B. Its decoder is Qwen3's with multimodal RoPE (three
position rows, frequencies interleaved t h w t h w ...); an image enters as a run of
`<|image_pad|>` tokens whose embeddings are replaced by the tower's merged patch embeddings, and
the tower's "deepstack" features (taken from some of its blocks) are added to the image tokens'
hidden states after the first decoder layers.

`Qwen3VL` implements the model seam (`gsjax.models.interface.CausalLM`): a `ModelInput` with
`vision=None` runs it as a text model; with a `VisionInput` the images are encoded in the same
pass. The host side, in NumPy: `mrope_positions` (the three position rows of a token sequence with
images, as Hugging Face's `get_rope_index` builds them for still images) and `vision_input`
(patches, layout and each image token's embedding index for a batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from gsjax.models import vlm
from gsjax.models.interface import VisionInput
from gsjax.models.qwen3 import QWEN3_8B, Qwen3, Qwen3Config
from gsjax.models.qwen3_vl_vision import VisionConfig, VisionTower, vision_layout
from gsjax.models.vlm import VisionLanguageModel


@dataclasses.dataclass(frozen=True)
class Qwen3VLConfig:
    text: Qwen3Config
    vision: VisionConfig
    image_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    video_token_id: int

    def __post_init__(self) -> None:
        if not self.text.mrope_section:
            raise ValueError("Qwen3VLConfig.text needs mrope_section (multimodal RoPE)")
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ValueError(f"vision out_hidden_size={self.vision.out_hidden_size} must equal the decoder's "
                             f"hidden_size={self.text.hidden_size}")

    def num_params(self) -> int:
        return self.text.num_params() + self.vision.num_params()


# Qwen3-VL-8B (the paper's policy) as trained: the decoder's run settings as Qwen3-8B's (bf16
# compute over fp32 master weights, scanned layers, full remat, splash attention), and the tower
# run for a learner micro-batch of up to 131,072 patches (docs/scaling.md): blocked attention,
# full remat, blocks scanned between deepstack taps.
QWEN3VL_8B = Qwen3VLConfig(
    text=dataclasses.replace(QWEN3_8B, rope_theta=5_000_000.0, mrope_section=(24, 20, 20), mrope_interleaved=True,
                             max_position_embeddings=262_144),
    vision=VisionConfig(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                        num_position_embeddings=2304, deepstack_visual_indexes=(8, 16, 24), patch_size=16,
                        temporal_patch_size=2, spatial_merge_size=2, dtype="bfloat16", param_dtype="float32",
                        attention="blocked", attention_block=512, remat="full", scan_blocks=True),
    image_token_id=151_655, vision_start_token_id=151_652, vision_end_token_id=151_653, video_token_id=151_656,
)


class Qwen3VL(VisionLanguageModel):
    def __init__(self, cfg: Qwen3VLConfig, *, rngs: nnx.Rngs):
        self.vl_cfg = cfg
        self.cfg = cfg.text  # what the sampler and the learner read (the seam's `cfg`)
        self.visual = VisionTower(cfg.vision, rngs=rngs)
        self.language_model = Qwen3(cfg.text, rngs=rngs)

    def encode_images(self, patches: jax.Array, layout) -> tuple[jax.Array, jax.Array]:
        return self.visual(patches, layout)


# ----------------------------------------------------------------------------- host side (NumPy)


def mrope_positions(tokens: Sequence[int], grids: np.ndarray, cfg: Qwen3VLConfig) -> tuple[np.ndarray, int]:
    """The [3, T] rotary positions of one token sequence whose images (patch grids `grids`
    [n, 3], in order) sit at runs of `image_token_id`, and the offset (largest position + 1 - T)
    that positions of later tokens add to their index.

    Text tokens count up on all three rows. An image's tokens take the temporal, row and column
    of their merged patch, all offset by the position the image starts at; the text after it
    continues from that start plus the image's larger merged side.
    """
    tokens = np.asarray(tokens)
    merge = cfg.vision.spatial_merge_size
    is_image = tokens == cfg.image_token_id
    out = np.zeros((3, len(tokens)), np.int64)
    pos, i, image = 0, 0, 0
    while i < len(tokens):
        if not is_image[i]:
            out[:, i] = pos
            pos, i = pos + 1, i + 1
            continue
        if image >= len(grids):
            raise ValueError(f"token {i}: image run {image + 1} has no grid ({len(grids)} image(s) given)")
        t, h, w = (int(g) for g in grids[image])
        h, w = h // merge, w // merge
        n = t * h * w
        if not is_image[i:i + n].all() or (i + n < len(tokens) and is_image[i + n]):
            raise ValueError(f"token {i}: image {image + 1} (grid {tuple(grids[image])}) needs a run of {n} "
                             f"image tokens; the run differs")
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
        out[:, i:i + n] = np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + pos
        pos += max(h, w)
        i, image = i + n, image + 1
    if image != len(grids):
        raise ValueError(f"{len(grids)} image grid(s) given but the tokens hold {image} image run(s)")
    return out, int(out.max(initial=-1) + 1 - len(tokens))


def vision_input(tokens: np.ndarray, pixel_values: np.ndarray, grids: np.ndarray, cfg: Qwen3VLConfig,
                 pad_to: int | None = None) -> VisionInput:
    """The `VisionInput` of a batch `tokens` [B, T] whose images (in row-major order) are the
    processor's `pixel_values` rows with patch grids `grids` [n, 3]; patches padded to `pad_to`."""
    return vlm.vision_input(tokens, pixel_values, grids, cfg, vision_layout, pad_to)
