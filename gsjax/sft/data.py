"""sft_data.json examples -> packed training rows.

Each example is rendered with the chat template (loss on assistant turns and their `<|im_end|>\\n`
only, an empty think block added where a turn has none, as the reference's LLaMA-Factory template
does), then examples are packed greedily into rows of one fixed length (`gsjax.data.packing`):
tokens, loss mask, segment ids (0 = padding; attention stays within a segment) and positions
restarting at 0 per segment. One row shape means one compilation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from gsjax.data.formats import SFTExample
from gsjax.data.packing import pack as pack_rows
from gsjax.tokenizer import Tokenizer

ROW_FIELDS = {"tokens": np.int32, "loss_mask": np.float32}


@dataclasses.dataclass(frozen=True)
class Encoded:
    ids: list[int]
    mask: list[int]


def encode(tok: Tokenizer, example: SFTExample, max_len: int, image_pad_tokens: int = 1) -> Encoded:
    """Render one example; longer than `max_len` is cut at `max_len` (the reference's cutoff)."""
    chat = tok.render_chat([{"role": m.role, "content": m.content} for m in example.messages],
                           add_generation_prompt=False, image_pad_tokens=image_pad_tokens)
    return Encoded(chat.ids[:max_len], chat.loss_mask[:max_len])


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    tokens: np.ndarray  # [B, L] int32
    loss_mask: np.ndarray  # [B, L] float32
    segment_ids: np.ndarray  # [B, L] int32, 0 = padding
    positions: np.ndarray  # [B, L] int32

    def rows(self, sl: slice = slice(None)) -> dict[str, np.ndarray]:
        return {k: v[sl] for k, v in dataclasses.asdict(self).items()}


def pack(examples: Sequence[Encoded], row_len: int) -> PackedBatch:
    """Greedy first-fit packing of examples (in order) into rows of `row_len`."""
    for ex in examples:
        if len(ex.ids) > row_len:
            raise ValueError(f"an example of {len(ex.ids)} tokens does not fit a row of {row_len}; encode with max_len <= row_len")
    rows = pack_rows([{"tokens": ex.ids, "loss_mask": ex.mask} for ex in examples], row_len, ROW_FIELDS)
    return PackedBatch(**rows)


def batches(encoded: Sequence[Encoded], row_len: int, rows_per_batch: int, seed: int) -> Iterator[PackedBatch]:
    """Endless batches of exactly `rows_per_batch` packed rows, reshuffling each epoch."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(encoded))
        packed = pack([encoded[i] for i in order], row_len)
        for start in range(0, len(packed.tokens) - rows_per_batch + 1, rows_per_batch):
            sl = slice(start, start + rows_per_batch)
            yield PackedBatch(packed.tokens[sl], packed.loss_mask[sl], packed.segment_ids[sl], packed.positions[sl])
