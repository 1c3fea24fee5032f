"""Small host-side exchanges between the processes of a run (each a no-op on one host): the
few numbers and names a step needs from every process (rewards, token counts, group ids)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import jax
import numpy as np


def _allgather(x: np.ndarray) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x))  # [processes, ...]


def allgather_rows(local: np.ndarray) -> tuple[np.ndarray, int]:
    """Every process's rows of `local` [n_p, k], concatenated in process order, and where this
    process's rows start. Processes may hold different numbers of rows."""
    local = np.asarray(local, np.float64)
    if jax.process_count() == 1:
        return local, 0
    counts = _allgather(np.asarray([len(local)], np.int64))[:, 0]
    padded = np.zeros((int(counts.max()),) + local.shape[1:], np.float64)
    padded[: len(local)] = local
    gathered = _allgather(padded)
    rows = np.concatenate([g[:c] for g, c in zip(gathered, counts)])
    return rows, int(counts[: jax.process_index()].sum())


def allgather_strings(local: Sequence[str]) -> list[str]:
    """Every process's strings, concatenated in process order."""
    if jax.process_count() == 1:
        return list(local)
    data = np.frombuffer(json.dumps(list(local)).encode(), np.uint8)
    sizes = _allgather(np.asarray([len(data)], np.int64))[:, 0]
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: len(data)] = data
    gathered = _allgather(padded)
    return [s for g, n in zip(gathered, sizes) for s in json.loads(bytes(g[:n]).decode())]


def is_primary() -> bool:
    """The process that writes logs, summaries and policy folders."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process gets here."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def process_share(items: Sequence) -> Sequence:
    """This process's contiguous block of `items` (the first blocks one longer when they do not
    divide evenly); concatenating every process's share in process order gives `items` back."""
    n, p, i = len(items), jax.process_count(), jax.process_index()
    start = i * (n // p) + min(i, n % p)
    return items[start:start + n // p + (i < n % p)]
