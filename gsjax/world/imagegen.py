"""The offline world's image generator: gen_prompt + reference images -> an image.

It stands in for Qwen-Image-Edit on the CPU, with the behaviour that matters for rewards: a better
answer gives a closer image.
- Each reference image is recognised by its pixels (nearest neighbour among the world's photos at
  16x16, like an edit model's image encoder), which gives the looks of the subject it shows.
- The text of gen_prompt is split at the ordinal phrases ("the first reference image", "the second
  ..."); each subject's part may describe its looks in the world's attribute words, and subjects
  are drawn left to right in the order the prompt mentions them.
- A subject the prompt describes completely is drawn from that description. A subject only shown
  by a reference image is copied loosely: its shape and main colour are kept, its details are lost
  (plain, a neutral second colour, a stock glyph), as an edit model keeps a reference's gist
  unless the prompt pins the details. A subject neither shown nor described is a grey filler.
- The scene is the first scene word in gen_prompt (a poster when none); the text is the first
  double-quoted string, in capitals.
The result is the ground-truth renderer's output for the recovered (looks, scene, text), so the
right answer reproduces the ground truth exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from gsjax.world.entities import World
from gsjax.world.render import MAX_TEXT_CHARS, render_scene
from gsjax.world.vocab import Signature, find_attributes, signature_from_text

_THUMB = 16
_ORDINAL = re.compile(r"\b(first|second|third|fourth) reference image", re.IGNORECASE)
_QUOTED = re.compile(r'"([^"]{1,200})"')
# The farthest a recognised photo may be from the nearest world photo (mean abs difference per
# pixel channel at 16x16, 0..255); JPEG re-encoding of a world photo stays far below it.
_RECOGNITION_LIMIT = 12.0
_FILLER = Signature("circle", "grey", "white", "plain", "star")  # a subject nobody specified


def _thumb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB").resize((_THUMB, _THUMB), Image.Resampling.BILINEAR), np.float32).ravel()


class WorldImageGenerator:
    """Built once per world; `generate` is thread-safe (read-only state)."""

    def __init__(self, world: World, root: Path):
        sigs, thumbs = [], []
        for e in world.entities:
            for path in e.image_paths:
                file = Path(root) / "images" / Path(path).name
                thumbs.append(_thumb(Image.open(file)))
                sigs.append(e.signature)
        self._signatures = sigs
        self._thumbs = np.stack(thumbs)

    def recognise(self, image_path: str) -> Signature | None:
        try:
            with Image.open(image_path) as img:
                t = _thumb(img)
        except (OSError, ValueError):
            return None
        dist = np.abs(self._thumbs - t).mean(axis=1)
        best = int(np.argmin(dist))
        return self._signatures[best] if dist[best] <= _RECOGNITION_LIMIT else None

    def generate(self, gen_prompt: str, ref_paths: Sequence[str]) -> Image.Image:
        parts = subject_parts(gen_prompt, max(1, min(len(ref_paths), 2)))
        subjects = []
        for i, part in parts:
            described = signature_from_text(part)
            seen = self.recognise(ref_paths[i]) if i < len(ref_paths) else None
            if described is not None:
                subjects.append(described)
            elif seen is not None:
                subjects.append(_loose_copy(seen))
            else:
                subjects.append(_FILLER)
        scenes = find_attributes(gen_prompt)["scene"]
        return render_scene(subjects, scenes[0] if scenes else "poster", _text(gen_prompt))


def subject_parts(gen_prompt: str, n: int) -> list[tuple[int, str]]:
    """Up to n (reference index, text) pairs, one per subject, in the order gen_prompt mentions
    them (left to right in the picture): the text runs from an ordinal phrase ("the second
    reference image") to the next. With no ordinal phrase, the whole prompt describes the first
    reference's subject and any other reference stands undescribed."""
    ordinals = ["first", "second", "third", "fourth"]
    marks = list(_ORDINAL.finditer(gen_prompt))
    if not marks:
        return [(0, gen_prompt)] + [(i, "") for i in range(1, n)]
    parts: list[tuple[int, str]] = []
    for j, m in enumerate(marks):
        idx = ordinals.index(m.group(1).lower())
        end = marks[j + 1].start() if j + 1 < len(marks) else len(gen_prompt)
        if all(idx != k for k, _ in parts):
            parts.append((idx, gen_prompt[m.start():end]))
    return parts[:n]


def _loose_copy(sig: Signature) -> Signature:
    secondary = "white" if sig.primary != "white" else "black"
    return Signature(sig.shape, sig.primary, secondary, "plain", "star" if sig.glyph != "star" else "cross")


def _text(gen_prompt: str) -> str | None:
    m = _QUOTED.search(gen_prompt)
    if not m:
        return None
    text = m.group(1).upper().encode("ascii", "ignore").decode()[:MAX_TEXT_CHARS].strip()
    return text or None

