"""Qwen2.5-VL in Flax NNX: the vision tower (`qwen2_5_vl_vision`) in front of the Qwen2 decoder.

Qwen-Image's text encoder is Qwen2.5-VL-7B. Its decoder is the Qwen2 layout (q/k/v biases, no q/k
norm; `gsjax.models.qwen3.Qwen3` with family "qwen2") with multimodal RoPE in three runs of
frequencies (`mrope_section`, e.g. 16 temporal, 24 height, 24 width: not interleaved as Qwen3-VL's);
an image enters as a run of `<|image_pad|>` tokens whose embeddings are replaced by the tower's
merged patch embeddings (no deepstack features).

`Qwen25VL` implements the model seam (`gsjax.models.interface.CausalLM`): a `ModelInput` with
`vision=None` runs it as a text model (equal position rows are plain 1-D RoPE); with a
`VisionInput` the images are encoded in the same pass. On the host: `rope_positions` (the three
position rows, as transformers' `get_rope_index` builds them for still images) and `vision_input`.

Checkpoints: `load_model` reads a `Qwen2_5_VLForConditionalGeneration` folder (config.json with
`text_config` / `vision_config`, or the flat layout of older saves) under either tensor naming
transformers 5 loads: `model.language_model.*` / `model.visual.*` (its in-memory names, and what
transformers 4.5x saved) or `model.*` / `visual.*` (the original release's, and what transformers
5 `save_pretrained` writes back); `lm_head.weight` in both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from gsjax.models import hf_io, vlm
from gsjax.models.interface import VisionInput
from gsjax.models.layout import CheckpointError, TensorMap
from gsjax.models.qwen2_5_vl_vision import VisionConfig, VisionTower, vision_layout, vision_tensor_layout
from gsjax.models.qwen3 import Qwen3, Qwen3Config
from gsjax.models.qwen3_vl import mrope_positions
from gsjax.models.vlm import VisionLanguageModel

ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
# transformers' Qwen2_5_VLConfig defaults, used when a config.json leaves them out.
DEFAULT_TOKEN_IDS = {"image_token_id": 151_655, "video_token_id": 151_656, "vision_start_token_id": 151_652,
                     "vision_end_token_id": 151_653}
DEFAULT_MROPE_SECTION = (16, 24, 24)  # Qwen2_5_VLRotaryEmbedding's default


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
    text: Qwen3Config
    vision: VisionConfig
    image_token_id: int = DEFAULT_TOKEN_IDS["image_token_id"]
    video_token_id: int = DEFAULT_TOKEN_IDS["video_token_id"]
    vision_start_token_id: int = DEFAULT_TOKEN_IDS["vision_start_token_id"]
    vision_end_token_id: int = DEFAULT_TOKEN_IDS["vision_end_token_id"]

    def __post_init__(self) -> None:
        if self.text.family != "qwen2":
            raise ValueError(f"Qwen25VLConfig.text has family {self.text.family!r}; Qwen2.5-VL's decoder is 'qwen2'")
        if not self.text.mrope_section or self.text.mrope_interleaved:
            raise ValueError("Qwen25VLConfig.text needs mrope_section with mrope_interleaved=False "
                             f"(three runs of frequencies), got {self.text.mrope_section} interleaved="
                             f"{self.text.mrope_interleaved}")
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ValueError(f"vision out_hidden_size={self.vision.out_hidden_size} must equal the decoder's "
                             f"hidden_size={self.text.hidden_size}")

    def num_params(self) -> int:
        return self.text.num_params() + self.vision.num_params()


# Qwen2.5-VL-7B-Instruct (Qwen-Image's text encoder), bf16.
QWEN2_5_VL_7B = Qwen25VLConfig(
    text=Qwen3Config(vocab_size=152_064, hidden_size=3584, intermediate_size=18_944, num_layers=28, num_heads=28,
                     num_kv_heads=4, head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_embeddings=False,
                     qk_norm=False, max_position_embeddings=128_000, mrope_section=(16, 24, 24),
                     mrope_interleaved=False, family="qwen2", dtype="bfloat16", param_dtype="bfloat16"),
    vision=VisionConfig(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                        fullatt_block_indexes=(7, 15, 23, 31), window_size=112, patch_size=14, tokens_per_second=2,
                        dtype="bfloat16", param_dtype="bfloat16"),
)


class Qwen25VL(VisionLanguageModel):
    def __init__(self, cfg: Qwen25VLConfig, *, rngs: nnx.Rngs):
        self.vl_cfg = cfg
        self.cfg = cfg.text  # what the sampler and the learner read (the seam's `cfg`)
        self.visual = VisionTower(cfg.vision, rngs=rngs)
        self.language_model = Qwen3(cfg.text, rngs=rngs)

    def encode_images(self, patches: jax.Array, layout) -> tuple[jax.Array, jax.Array]:
        """Merged embeddings and no deepstack features (Qwen2.5-VL has none)."""
        embeds = self.visual(patches, layout)
        return embeds, jnp.zeros((0, *embeds.shape), embeds.dtype)


# ----------------------------------------------------------------------------- host side (NumPy)


def rope_positions(tokens: Sequence[int], grids: np.ndarray, cfg: Qwen25VLConfig) -> tuple[np.ndarray, int]:
    """The [3, T] rotary positions of one token sequence whose still images (patch grids `grids`
    [n, 3], in order) sit at runs of `image_token_id`, and the offset (largest position + 1 - T)
    for later tokens, as transformers' Qwen2.5-VL `get_rope_index` builds them.

    Text tokens count up on all three rows. An image starting at position s gives its merged
    token (f, r, c) the rows (s + f, s + r, s + c): for images the temporal row is not scaled by
    `tokens_per_second` (that is for videos; a still image has t = 1, so it is s throughout), and
    the text after it continues at s + max(rows, cols). That is the same rule as Qwen3-VL's for
    still images, so `gsjax.models.qwen3_vl.mrope_positions` computes it.
    """
    return mrope_positions(tokens, grids, cfg)


def vision_input(tokens: np.ndarray, pixel_values: np.ndarray, grids: np.ndarray, cfg: Qwen25VLConfig,
                 pad_to: int | None = None) -> VisionInput:
    """The `VisionInput` of a batch `tokens` [B, T] whose images (in row-major order) are the
    processor's `pixel_values` rows with patch grids `grids` [n, 3]; patches padded to `pad_to`."""
    return vlm.vision_input(tokens, pixel_values, grids, cfg, vision_layout, pad_to)


# ----------------------------------------------------------------------------- checkpoints


def config_from_hf(hf: dict[str, Any], source: str = "config.json", **run: Any) -> Qwen25VLConfig:
    """A `Qwen2_5_VLForConditionalGeneration` config.json (transformers 5's nested `text_config`,
    or the flat layout older versions saved) as a Qwen25VLConfig, naming any field that is wrong;
    `run` sets hf_io.RUN_FIELDS of the decoder and the tower (`hf_io.split_run`)."""
    archs = hf.get("architectures") or []
    if ARCHITECTURE not in archs:
        raise CheckpointError(f"{source}: field 'architectures' is {archs!r}; expected [{ARCHITECTURE!r}]")
    if not isinstance(hf.get("vision_config"), dict):
        raise CheckpointError(f"{source}: a {ARCHITECTURE} config needs a 'vision_config' object")
    unknown = sorted(set(run) - set(hf_io.RUN_FIELDS))
    if unknown:
        raise TypeError(f"unknown run setting(s) {unknown}; expected {hf_io.RUN_FIELDS}")
    nested = isinstance(hf.get("text_config"), dict)
    text, text_source = (hf["text_config"], f"{source}: text_config") if nested else (hf, source)
    if text.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{text_source}: field 'hidden_act' is {text['hidden_act']!r}; expected 'silu'")
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    section = rope.get("mrope_section", list(DEFAULT_MROPE_SECTION))
    if not isinstance(section, (list, tuple)) or len(section) != 3 or not all(isinstance(n, int) for n in section):
        raise CheckpointError(f"{text_source}: rope_parameters.mrope_section is {section!r}; expected 3 counts")
    # As transformers reads it: an "mrope" rope type is the default one, theta defaults to 1e6 and
    # the norm epsilon to 1e-5 (Qwen2_5_VLTextConfig's defaults).
    flat = {k: v for k, v in text.items() if k not in ("rope_scaling", "rope_parameters", "architectures")}
    flat.update(
        architectures=["Qwen2ForCausalLM"],
        rope_parameters={"rope_type": "default" if rope_type == "mrope" else rope_type,
                         "rope_theta": rope.get("rope_theta", text.get("rope_theta", 1_000_000.0))},
        rms_norm_eps=text.get("rms_norm_eps", 1e-5),
        # transformers 5 ties when the outer config says so, or (older saves) the text config does.
        tie_word_embeddings=bool(hf.get("tie_word_embeddings")) or bool(text.get("tie_word_embeddings")),
    )
    decoder = hf_io.config_from_hf(flat, text_source, **run)
    try:
        decoder = dataclasses.replace(decoder, mrope_section=tuple(section), mrope_interleaved=False)
    except ValueError as e:
        raise CheckpointError(f"{text_source}: rope_parameters.mrope_section: {e}") from e
    vision = VisionConfig.from_hf(hf["vision_config"], f"{source}: vision_config", **hf_io.split_run(run)[1])
    ids = {}
    for key, default in DEFAULT_TOKEN_IDS.items():
        value = hf.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise CheckpointError(f"{source}: field {key!r} is {value!r}; expected a token id")
        ids[key] = value
    try:
        return Qwen25VLConfig(decoder, vision, **ids)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e


def checkpoint_layout(cfg: Qwen25VLConfig, names: Iterable[str] = ()) -> list[TensorMap]:
    """Every tensor of a Qwen2.5-VL checkpoint, named as the checkpoint holding tensors `names`
    names them: `model.language_model.*` / `model.visual.*`, or `model.*` / `visual.*` (each
    part decided on its own, as transformers' key mapping does; new names when neither shows)."""
    names = set(names)
    legacy_lm = not any(n.startswith("model.language_model.") for n in names) and any(
        n.startswith("model.") and not n.startswith("model.visual.") for n in names)
    legacy_vision = (not any(n.startswith("model.visual.") for n in names)
                     and any(n.startswith("visual.") for n in names))
    lm = "model." if legacy_lm else "model.language_model."
    return (hf_io.tensor_layout(cfg.text, lm, ("language_model",))
            + vision_tensor_layout(cfg.vision, "visual." if legacy_vision else "model.visual.", ("visual",)))


def load_model(folder: str | Path, mesh: Mesh | None = None, *, progress: bool = False, **run: Any) -> Qwen25VL:
    """Load a Qwen2_5_VLForConditionalGeneration folder (single or sharded safetensors) into a
    Qwen25VL placed on `mesh` by its logical axes; `run` sets hf_io.RUN_FIELDS (None or "" keeps
    the default). A missing, unexpected or mis-shaped tensor raises CheckpointError naming it."""
    folder = Path(folder)
    path = folder / "config.json"
    cfg = config_from_hf(hf_io.read_json(path), str(path), **{k: v for k, v in run.items() if v not in (None, "")})
    files = hf_io.file_index(folder)
    return hf_io.load_tensors_into(
        lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)), folder, checkpoint_layout(cfg, files), files,
        mesh=mesh, param_dtype=cfg.text.param_dtype,
        ignore=lambda n: cfg.text.tie_embeddings and n == "lm_head.weight",
        what=f"Qwen25VL {cfg}", progress=progress,
    )
