"""The image generator interface: gen_prompt + reference images -> an image file.

Backends: `world` (the offline world's renderer, in process) and `http` (any server speaking the
reference's `POST /generate`, in `generator_http.py`). The in-process JAX Qwen-Image backend
plugs in here too: anything with `generate(request, out_path) -> GenResult`.

What is sent is decided in one place, `plan_request`: with at least one valid reference image the
answer's gen_prompt goes with the first `generator_refs` references (Qwen-Image-Edit); with none
the original prompt goes alone with the text-to-image suffix (the reference's eval fallback).
`answer_request` is that rule for an agent's answer (or none) as evaluation applies it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from gsjax.agent.types import Answer
from gsjax.rewards.types import RewardSettings

T2I_SUFFIX = ", Ultra HD, 4K, cinematic composition."


@dataclasses.dataclass(frozen=True)
class GenRequest:
    prompt: str
    ref_paths: tuple[str, ...]  # empty = text-to-image
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class GenResult:
    path: str | None  # the written image, or None on failure
    error: str | None = None
    latency_s: float = 0.0


class ImageGenerator(Protocol):
    def generate(self, request: GenRequest, out_path: Path) -> GenResult: ...


def plan_request(gen_prompt: str, original_prompt: str, valid_ref_paths: Sequence[str],
                 settings: RewardSettings, seed: int = 0) -> GenRequest:
    if valid_ref_paths:
        return GenRequest(gen_prompt, tuple(valid_ref_paths[: settings.generator_refs]), seed)
    return GenRequest(original_prompt.rstrip() + T2I_SUFFIX, (), seed)


def valid_ref_paths(answer: Answer | None) -> list[str]:
    """The answer's reference images that exist as files, in the answer's order."""
    return [r.path for r in answer.references if r.path and Path(r.path).is_file()] if answer else []


def answer_request(answer: Answer | None, original_prompt: str, settings: RewardSettings) -> GenRequest:
    """What evaluation sends for an agent's answer (the reference's gen_image_from_results): its
    gen_prompt with its valid references, or, without a gen_prompt or a valid reference, the
    original prompt to text-to-image."""
    gen_prompt = answer.gen_prompt if answer and answer.gen_prompt.strip() else ""
    return plan_request(gen_prompt, original_prompt, valid_ref_paths(answer) if gen_prompt else [], settings)


class WorldGenerator:
    """The offline world's renderer behind the generator interface."""

    def __init__(self, world_root: Path | str):
        from gsjax.world.build import load_world
        from gsjax.world.imagegen import WorldImageGenerator

        self._gen = WorldImageGenerator(load_world(world_root), Path(world_root))

    def generate(self, request: GenRequest, out_path: Path) -> GenResult:
        start = time.perf_counter()
        try:
            image = self._gen.generate(request.prompt, list(request.ref_paths))
            out_path.parent.mkdir(parents=True, exist_ok=True)
            image.save(out_path)
        except Exception as e:  # a renderer failure is a recorded failure, never a crash
            return GenResult(None, f"world generator: {type(e).__name__}: {e}", time.perf_counter() - start)
        return GenResult(str(out_path), None, time.perf_counter() - start)
