"""sft_data.json examples -> packed training rows.

Each example is rendered with the chat template (loss on assistant turns and their `<|im_end|>\\n`
only, an empty think block added where a turn has none, as the reference's LLaMA-Factory template
does), then examples are packed greedily into rows of one fixed length (`gsjax.data.packing`):
tokens, loss mask, segment ids (0 = padding; attention stays within a segment) and positions
restarting at 0 per segment. One row shape means one compilation.

Images: with an image processor (`encode(..., images=SFTImages())`, the reference's path:
LLaMA-Factory's downscale to `image_max_pixels: 160000`, then the Qwen3-VL processor), an
example's image files become pixel rows and patch grids, each `<image>` renders as
`image_token_count(grid)` `<|image_pad|>` tokens, and the images travel with their example into the
packed rows (`PackedBatch.images`). Without one (the default), each `<image>` renders as one pad
token and no pixels: text only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from gsjax.data.formats import SFTExample
from gsjax.data.images import (IMAGE_PAD, REFERENCE_MAX_PIXELS, ImageProcessorConfig, image_token_count,
                               llamafactory_fit, preprocess)
from gsjax.data.packing import RowImages, pack_with_images
from gsjax.tokenizer import Tokenizer

ROW_FIELDS = {"tokens": np.int32, "loss_mask": np.float32}
ROW_ARRAYS = ("tokens", "loss_mask", "segment_ids", "positions")

# image paths -> (pixel_values [patches, patch_dim] float32, grids [n, 3]), one grid per path.
ImageProcessor = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class SFTImages:
    """The reference's SFT image path: each file downscaled by LLaMA-Factory's rule to at most
    `max_pixels` (`gsjax.data.images.llamafactory_fit`), then the Qwen3-VL processor."""

    processor: ImageProcessorConfig = ImageProcessorConfig()
    max_pixels: int = REFERENCE_MAX_PIXELS  # the reference's gen_qwen3_sft.yaml: image_max_pixels 160000

    def __call__(self, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return preprocess([llamafactory_fit(p, self.max_pixels) for p in paths], self.processor)


@dataclasses.dataclass(frozen=True)
class Encoded:
    ids: list[int]
    mask: list[float]  # loss weight per token
    pixel_values: np.ndarray | None = None  # [patches, patch_dim]: the kept images' pixel rows
    image_grids: np.ndarray | None = None  # [n, 3] their patch grids, in token order


def _image_runs(ids: Sequence[int], pad: int) -> list[tuple[int, int]]:
    """[start, stop) of each run of `pad` ids, in order."""
    is_pad = np.concatenate([[False], np.asarray(ids) == pad, [False]])
    edges = np.flatnonzero(np.diff(is_pad.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def weigh_context(tok: Tokenizer, ids: Sequence[int], mask: Sequence[int], written: Sequence[int],
                  weight: float) -> list[float]:
    """The loss mask with every token the policy does not write (system, user, tool responses) at
    `weight` instead of 0, except the images' tokens (vision start / pads / end: nothing to learn).
    Trained assistant tokens stay at 1, and an untrained assistant turn (`written`, not in `mask`)
    at 0."""
    if not weight:
        return [float(m) for m in mask]
    skip = {tok.token_to_id(t) for t in ("<|vision_start|>", IMAGE_PAD, "<|vision_end|>")}
    return [1.0 if m else 0.0 if w or i in skip else float(weight) for i, m, w in zip(ids, mask, written)]


def encode(tok: Tokenizer, example: SFTExample, max_len: int, image_pad_tokens: int = 1,
           images: ImageProcessor | None = None, merge_size: int = 2, context_weight: float = 0.0) -> Encoded:
    """Render one example; longer than `max_len` is cut at `max_len` (the reference's cutoff).

    `context_weight` > 0 also trains on the tokens the policy reads (`weigh_context`); the
    reference trains on assistant tokens only (0).

    With `images`, the example's image files go through it, the i-th `<image>` takes
    `image_token_count(grid_i, merge_size)` pad tokens (merge_size: the tower's
    spatial_merge_size), and the cut never splits an image: one that would fall inside an image
    (`<|vision_start|>`, its pads, `<|vision_end|>`) moves to just before it, and the images past
    the cut are dropped with their pixels."""
    messages = [{"role": m.role, "content": m.content, "train": m.train} for m in example.messages]
    if images is None or not example.images:
        chat = tok.render_chat(messages, add_generation_prompt=False, image_pad_tokens=image_pad_tokens)
        return Encoded(chat.ids[:max_len], weigh_context(tok, chat.ids[:max_len], chat.loss_mask[:max_len],
                                                         chat.written[:max_len], context_weight))
    pixel_values, grids = images(example.images)
    grids = np.asarray(grids, np.int64).reshape(-1, 3)
    if len(grids) != len(example.images):
        raise ValueError(f"the image processor gave {len(grids)} grids for {len(example.images)} images "
                         f"({list(example.images)})")
    counts = [image_token_count(g, merge_size) for g in grids]
    chat = tok.render_chat(messages, add_generation_prompt=False, image_pad_tokens=counts)
    runs = _image_runs(chat.ids, tok.token_to_id(IMAGE_PAD))
    if [stop - start for start, stop in runs] != counts:
        raise ValueError(f"example with images {list(example.images)}: its {IMAGE_PAD} runs have lengths "
                         f"{[stop - start for start, stop in runs]}, expected {counts} (is {IMAGE_PAD} in its text?)")
    cut, kept = min(max_len, len(chat.ids)), 0
    for start, stop in runs:  # the image is ids[start - 1] (vision start) .. ids[stop] (vision end)
        if stop + 1 > cut:
            cut = min(cut, start - 1)
            break
        kept += 1
    mask = weigh_context(tok, chat.ids[:cut], chat.loss_mask[:cut], chat.written[:cut], context_weight)
    if kept == 0:
        return Encoded(chat.ids[:cut], mask)
    patches = int(np.prod(grids[:kept], axis=1).sum())
    return Encoded(chat.ids[:cut], mask, np.asarray(pixel_values[:patches], np.float32), grids[:kept])


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    tokens: np.ndarray  # [B, L] int32
    loss_mask: np.ndarray  # [B, L] float32
    segment_ids: np.ndarray  # [B, L] int32, 0 = padding
    positions: np.ndarray  # [B, L] int32
    images: RowImages | None = None  # the rows' images (None: text only)

    def rows(self, sl: slice = slice(None)) -> dict[str, np.ndarray]:
        return {k: getattr(self, k)[sl] for k in ROW_ARRAYS}

    def select(self, start: int, stop: int) -> PackedBatch:
        """Rows [start, stop) with their images."""
        images = None if self.images is None else self.images.rows(start, stop)
        return PackedBatch(*(getattr(self, k)[start:stop] for k in ROW_ARRAYS), images)


def pack(examples: Sequence[Encoded], row_len: int) -> PackedBatch:
    """Greedy first-fit packing of examples (in order) into rows of `row_len`."""
    for ex in examples:
        if len(ex.ids) > row_len:
            raise ValueError(f"an example of {len(ex.ids)} tokens does not fit a row of {row_len}; encode with max_len <= row_len")
    images = [None if ex.pixel_values is None else (ex.pixel_values, ex.image_grids) for ex in examples]
    rows, row_images = pack_with_images([{"tokens": ex.ids, "loss_mask": ex.mask} for ex in examples], row_len,
                                        ROW_FIELDS, None if all(i is None for i in images) else images)
    return PackedBatch(**rows, images=row_images)


def batches(encoded: Sequence[Encoded], row_len: int, rows_per_batch: int, seed: int) -> Iterator[PackedBatch]:
    """Endless batches of exactly `rows_per_batch` packed rows, reshuffling each epoch."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(encoded))
        packed = pack([encoded[i] for i in order], row_len)
        for start in range(0, len(packed.tokens) - rows_per_batch + 1, rows_per_batch):
            yield packed.select(start, start + rows_per_batch)
