"""Variable-length sequences -> packed rows of one length, the learner's only input shape.

Sequences are placed greedily, in order, into the first row with room (first fit); each row gets
`segment_ids` (1, 2, ... per sequence, 0 = padding: attention stays within a segment) and
`positions` restarting at 0 per sequence. Every other field is per token and moves with its
tokens. One row length means one compiled step; packing instead of padding each sequence to a
bucket means a batch costs about what its tokens cost.

A sequence may come with images (the processor's pixel rows and patch grids, in token-stream
order): `pack_with_images` keeps them with their sequence, so a packed row's images are its
segments' images in order (`RowImages`, each image tagged with its row and segment).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

SEGMENT_IDS, POSITIONS = "segment_ids", "positions"

# One sequence's images: (pixel_values [patches, patch_dim] float32, grids [n, 3] int (t, h, w)).
SequenceImages = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class RowImages:
    """The images of packed rows in row-major token order (row by row, each row's segments in
    order, each segment's images in order)."""

    pixel_values: np.ndarray  # [patches, patch_dim] float32: every image's pixel rows, in order
    grids: np.ndarray  # [n, 3] int64 patch grids (t, h, w)
    row: np.ndarray  # [n] int64: the packed row each image sits in
    segment: np.ndarray  # [n] int64: its segment id (1, 2, ...) in that row

    def __post_init__(self) -> None:
        patches = int(np.prod(self.grids, axis=1).sum()) if len(self.grids) else 0
        if self.pixel_values.shape[0] != patches:
            raise ValueError(f"RowImages: {self.pixel_values.shape[0]} pixel rows but the grids "
                             f"{self.grids.tolist()} need {patches}")
        if not (len(self.grids) == len(self.row) == len(self.segment)):
            raise ValueError(f"RowImages: {len(self.grids)} grids, {len(self.row)} rows, {len(self.segment)} segments")
        if len(self.row) and (np.diff(self.row) < 0).any():
            raise ValueError(f"RowImages: images must be in row order, got rows {self.row.tolist()}")

    @classmethod
    def empty(cls, patch_dim: int = 0) -> RowImages:
        return cls(np.zeros((0, patch_dim), np.float32), np.zeros((0, 3), np.int64), np.zeros(0, np.int64),
                   np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.grids)

    @property
    def patches(self) -> np.ndarray:
        """[n] pixel rows of each image."""
        return np.prod(self.grids, axis=1) if len(self.grids) else np.zeros(0, np.int64)

    def rows(self, start: int, stop: int) -> RowImages:
        """The images of rows [start, stop), their rows counted from `start`."""
        first, last = np.searchsorted(self.row, [start, stop])
        offsets = np.concatenate([[0], np.cumsum(self.patches)])
        return RowImages(self.pixel_values[offsets[first]:offsets[last]], self.grids[first:last],
                         self.row[first:last] - start, self.segment[first:last])


def first_fit(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """Indices of the sequences in each row, greedy first fit in the given order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        if n > row_len:
            raise ValueError(f"a sequence of {n} tokens does not fit a row of {row_len}")
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(row_len - n)
    return rows


def pack(seqs: Sequence[Mapping[str, Sequence]], row_len: int, dtypes: Mapping[str, np.dtype],
         min_rows: int = 0) -> dict[str, np.ndarray]:
    """Pack `seqs` (each a mapping field -> per-token values, all of one length) into rows [R, L]
    of `row_len`: the fields named in `dtypes`, plus `segment_ids` and `positions`. At least
    `min_rows` rows (empty rows are all padding)."""
    return pack_with_images(seqs, row_len, dtypes, None, min_rows)[0]


def pack_with_images(seqs: Sequence[Mapping[str, Sequence]], row_len: int, dtypes: Mapping[str, np.dtype],
                     images: Sequence[SequenceImages | None] | None, min_rows: int = 0
                     ) -> tuple[dict[str, np.ndarray], RowImages | None]:
    """`pack`, and the images of sequence i (`images[i]`, None for none) kept with it: the rows'
    `RowImages` (None when `images` is None)."""
    lengths = [len(next(iter(s.values()))) for s in seqs]
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        bad = {k: len(v) for k, v in s.items() if k in dtypes and len(v) != n}
        if bad:
            raise ValueError(f"sequence {i}: fields of different lengths {dict(bad, first=n)}")
    if images is not None and len(images) != len(seqs):
        raise ValueError(f"{len(images)} image entries for {len(seqs)} sequences; expected one per sequence")
    rows = first_fit(lengths, row_len)
    shape = (max(len(rows), min_rows), row_len)
    out = {k: np.zeros(shape, dt) for k, dt in dtypes.items()}
    out[SEGMENT_IDS] = np.zeros(shape, np.int32)
    out[POSITIONS] = np.zeros(shape, np.int32)
    pixels, grids, where = [], [], []
    for r, members in enumerate(rows):
        at = 0
        for segment, i in enumerate(members, 1):
            n = lengths[i]
            for k in dtypes:
                out[k][r, at:at + n] = seqs[i][k]
            out[SEGMENT_IDS][r, at:at + n] = segment
            out[POSITIONS][r, at:at + n] = np.arange(n)
            at += n
            if images is not None and images[i] is not None:
                values, g = images[i]
                g = np.asarray(g, np.int64).reshape(-1, 3)
                pixels.append(np.asarray(values, np.float32))
                grids.append(g)
                where += [(r, segment)] * len(g)
    if images is None:
        return out, None
    if not grids:
        return out, RowImages.empty()
    where_arr = np.asarray(where, np.int64).reshape(-1, 2)
    return out, RowImages(np.concatenate(pixels), np.concatenate(grids), where_arr[:, 0], where_arr[:, 1])
