"""How a Hugging Face checkpoint's tensors map onto an NNX model's variables: one `TensorMap` per
tensor. Each model module lists its own maps; `gsjax.models.hf_io` reads and writes folders."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint folder that does not describe a model gsjax can load."""


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One Hugging Face tensor and where it lives in the NNX model."""

    hf_name: str
    path: tuple[Any, ...]  # the NNX state path
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    layer: int | None = None  # the tensor is entry `layer` of a stacked (scanned) parameter


def same(x: np.ndarray) -> np.ndarray:
    return x


def transposed(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.T)
