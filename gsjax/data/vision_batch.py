"""Packed rows with images -> the arrays of a vision-language learner step, per micro-batch.

`TrainState` splits a process's packed rows into M micro-batches of `per_micro` rows. For a
vision-language policy (`gsjax.models.qwen3_vl.Qwen3VL`) whose rows hold images, this module adds,
on the host, in NumPy:
- `positions` [R, L, 3] (replacing the text positions [R, L]): the multimodal RoPE rows (temporal,
  height, width) of each segment, `mrope_positions` of its tokens and images, restarting at 0 per
  segment as the text positions do;
- `token_index` [R, L] int32: each image token's row in its micro-batch's merged image
  embeddings, -1 for every other token;
- per micro-batch, [M, P, ...]: `patches` (the pixel rows of the micro-batch's images, its rows'
  images concatenated in row order, zero-padded to P) and the vision tower's layout of them
  (`vision_positions` [M, P, 2], `vision_pos_index` [M, P, 4], `vision_pos_weight` [M, P, 4],
  `vision_segment_ids` [M, P]: the fields of `vision_layout(grids, pad_to=P)`).

P, the bucket, is one size for every micro-batch of a step: the smallest `unit * 2**k` holding the
largest micro-batch's pixel rows on any process, where `unit` is lcm(merge**2, this process's
data x fsdp shards) (merge**2 for the tower's merger; the shards so the patch axis divides over
them). Few distinct buckets means few compiled steps.

With several processes, each builds the arrays of its own rows and images; the global patch axis
of a micro-batch is the processes' buckets concatenated in process order (sharded over data x fsdp
as the rows are), so process p offsets its token indices by p * P / merge**2 and its attention
segments by p * P. The tower then sees every process's images of the micro-batch at once, each
image attending only to itself, and each token picks its own image's embeddings: the numbers of
one process holding every row.

`model_input` turns one micro-batch of these fields (or of text-only rows) into the decoder's
`ModelInput`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gsjax.data.packing import POSITIONS, SEGMENT_IDS, RowImages
from gsjax.models.interface import ModelInput, VisionInput
from gsjax.models.qwen3_vl import Qwen3VLConfig, mrope_positions
from gsjax.models.qwen3_vl_vision import VisionLayout, vision_layout

PATCHES, TOKEN_INDEX = "patches", "token_index"
# The per-patch VisionLayout arrays, in the order of its fields.
LAYOUT_FIELDS = ("vision_positions", "vision_pos_index", "vision_pos_weight", "vision_segment_ids")


def vision_config(model: Any) -> Qwen3VLConfig | None:
    """The vision settings of a vision-language policy (`vl_cfg`), None for a text model."""
    return getattr(model, "vl_cfg", None)


def row_fields() -> dict[str, tuple[tuple[int, ...], Any]]:
    """Per-row fields a batch with images has besides the text ones: name -> (shape after
    [rows, length], dtype)."""
    return {POSITIONS: ((3,), np.int32), TOKEN_INDEX: ((), np.int32)}


def micro_batch_fields(cfg: Qwen3VLConfig) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Per-micro-batch fields: name -> (shape after [micro-batches, patches], dtype)."""
    return {PATCHES: ((cfg.vision.patch_dim,), np.float32), LAYOUT_FIELDS[0]: ((2,), np.int32),
            LAYOUT_FIELDS[1]: ((4,), np.int32), LAYOUT_FIELDS[2]: ((4,), np.float32), LAYOUT_FIELDS[3]: ((), np.int32)}


def micro_batch_patches(images: RowImages, micro: int, per_micro: int) -> int:
    """The most pixel rows that one of `micro` micro-batches of `per_micro` consecutive rows holds."""
    if not len(images):
        return 0
    return int(np.bincount(images.row // per_micro, weights=images.patches, minlength=micro).max())


def bucket(patches: int, unit: int) -> int:
    """The smallest `unit * 2**k` (k >= 0) that holds `patches`."""
    blocks = max(1, math.ceil(patches / unit))
    return unit << max(0, math.ceil(math.log2(blocks)))


def multimodal_positions(tokens: np.ndarray, segment_ids: np.ndarray, images: RowImages,
                         cfg: Qwen3VLConfig) -> np.ndarray:
    """[R, L, 3] int32 rotary positions of packed rows: per segment, `mrope_positions` of its
    tokens and its images (0 on padding)."""
    out = np.zeros(tokens.shape + (3,), np.int32)
    for r in range(tokens.shape[0]):
        mine = np.flatnonzero(images.row == r)
        for s in np.unique(segment_ids[r][segment_ids[r] > 0]):
            at = np.flatnonzero(segment_ids[r] == s)
            first, last = int(at[0]), int(at[-1]) + 1
            grids = images.grids[mine[images.segment[mine] == s]]
            if not len(grids) and not (tokens[r, first:last] == cfg.image_token_id).any():
                out[r, first:last] = np.arange(last - first)[:, None]
                continue
            try:
                pos, _ = mrope_positions(tokens[r, first:last], grids, cfg)
            except ValueError as e:
                raise ValueError(f"row {r}, segment {s} (tokens {first}..{last - 1}): {e}") from e
            out[r, first:last] = pos.T
    return out


def vision_arrays(rows: Mapping[str, np.ndarray], images: RowImages, cfg: Qwen3VLConfig, micro: int,
                  per_micro: int, patches: int, process: int = 0
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The vision fields of this process's rows (`rows`: [micro * per_micro, L] arrays, padding
    rows included) and their images: (per-row fields [micro * per_micro, L, ...],
    per-micro-batch fields [micro, patches, ...]). `patches` is the bucket P; `process` this
    process's index (the offset of its block of the global patch axis)."""
    tokens, segment_ids = rows["tokens"], rows[SEGMENT_IDS]
    if tokens.shape[0] != micro * per_micro:
        raise ValueError(f"rows {tokens.shape}: expected {micro} x {per_micro} rows")
    merge = cfg.vision.merge_unit
    if patches % merge:
        raise ValueError(f"bucket of {patches} patches is not a multiple of spatial_merge_size**2={merge}")
    if len(images) and images.pixel_values.shape[1] != cfg.vision.patch_dim:
        raise ValueError(f"pixel rows of width {images.pixel_values.shape[1]}; the vision tower takes "
                         f"{cfg.vision.patch_dim} (in_channels x temporal_patch_size x patch_size**2)")
    if len(images) and images.row.max() >= tokens.shape[0]:
        raise ValueError(f"an image sits in row {int(images.row.max())} of {tokens.shape[0]} rows")
    token_index = np.full(tokens.shape, -1, np.int32)
    fields = micro_batch_fields(cfg)
    per_mb = {k: np.zeros((micro, patches) + trail, dt) for k, (trail, dt) in fields.items()}
    for m in range(micro):
        block = slice(m * per_micro, (m + 1) * per_micro)
        mine = images.rows(block.start, block.stop)
        total = int(mine.patches.sum())
        if total > patches:
            raise ValueError(f"micro-batch {m} holds {total} patches, more than the bucket of {patches}")
        is_image = tokens[block] == cfg.image_token_id
        count = int(is_image.sum())
        if count != total // merge:
            raise ValueError(f"micro-batch {m} (rows {block.start}..{block.stop - 1}) holds {count} image tokens "
                             f"but its {len(mine)} image(s) give {total // merge} merged embeddings")
        index = token_index[block]
        index[is_image] = np.arange(count, dtype=np.int32) + process * (patches // merge)
        layout = vision_layout(mine.grids, cfg.vision, pad_to=patches)
        per_mb[PATCHES][m, :total] = mine.pixel_values
        for name, value in zip(LAYOUT_FIELDS, layout[:4]):
            per_mb[name][m] = value
        seg = per_mb[LAYOUT_FIELDS[3]][m]
        seg[seg > 0] += process * patches  # padding (0) stays apart from every image
    positions = multimodal_positions(tokens, segment_ids, images, cfg)
    return {POSITIONS: positions, TOKEN_INDEX: token_index}, per_mb


def model_input(batch: Mapping[str, jax.Array]) -> ModelInput:
    """The decoder input of one micro-batch: text rows as they are (positions [R, L]), or rows
    with images: positions [R, L, 3] as [3, R, L] and the micro-batch's `VisionInput`."""
    if PATCHES not in batch:
        return ModelInput(batch["tokens"], batch[POSITIONS], batch[SEGMENT_IDS])
    layout = VisionLayout(*(batch[k] for k in LAYOUT_FIELDS))
    return ModelInput(batch["tokens"], jnp.moveaxis(batch[POSITIONS], -1, 0), batch[SEGMENT_IDS],
                      VisionInput(batch[PATCHES], layout, batch[TOKEN_INDEX]))
