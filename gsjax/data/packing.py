"""Variable-length sequences -> packed rows of one length, the learner's only input shape.

Sequences are placed greedily, in order, into the first row with room (first fit); each row gets
`segment_ids` (1, 2, ... per sequence, 0 = padding: attention stays within a segment) and
`positions` restarting at 0 per sequence. Every other field is per token and moves with its
tokens. One row length means one compiled step; packing instead of padding each sequence to a
bucket means a batch costs about what its tokens cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

SEGMENT_IDS, POSITIONS = "segment_ids", "positions"


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
    lengths = [len(next(iter(s.values()))) for s in seqs]
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        bad = {k: len(v) for k, v in s.items() if k in dtypes and len(v) != n}
        if bad:
            raise ValueError(f"sequence {i}: fields of different lengths {dict(bad, first=n)}")
    rows = first_fit(lengths, row_len)
    shape = (max(len(rows), min_rows), row_len)
    out = {k: np.zeros(shape, dt) for k, dt in dtypes.items()}
    out[SEGMENT_IDS] = np.zeros(shape, np.int32)
    out[POSITIONS] = np.zeros(shape, np.int32)
    for r, members in enumerate(rows):
        at = 0
        for segment, i in enumerate(members, 1):
            n = lengths[i]
            for k in dtypes:
                out[k][r, at:at + n] = seqs[i][k]
            out[SEGMENT_IDS][r, at:at + n] = segment
            out[POSITIONS][r, at:at + n] = np.arange(n)
            at += n
    return out
