"""The offline world's judges: they fill the same schema as the GPT-4.1 judges (JudgeScores,
TextScore), from the world's answer keys and pixel comparison with the ground truth.

Image judge (generated image vs ground truth, for prompt `sample_id`):
- visual_correctness from the subject pixels: where the ground truth's subjects are (found by
  re-rendering the key with stand-in subjects), the mean absolute difference decides 1 / 0.5 / 0;
- text_accuracy (N/A when the prompt needs no text) from the label's pixels the same way;
- faithfulness: the scene's frame, the subjects and the text are each present (counted, snapped);
- aesthetics: 1 for a well-formed picture of the ground truth's size, 0.5 otherwise.
Text judge: per subject, its name and its looks (in the world's words) in the answer, and the
required text quoted, as a fraction snapped to {0, .25, .5, .75, 1}.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from gsjax.agent.types import Answer, ImageRef
from gsjax.rewards.judge_parse import snap_text_score
from gsjax.rewards.types import JudgeScores, TextScore
from gsjax.world.imagegen import subject_parts
from gsjax.world.prompts import AnswerKey
from gsjax.world.render import render_scene
from gsjax.world.vocab import Signature, signature_from_text

# Thresholds on a mean absolute difference per pixel channel (0..255) inside a region.
EXACT = 3.0  # the same drawing (re-encoding noise only)
CLOSE = 30.0  # the right subject drawn loosely, or text partly right
_STANDINS = (Signature("square", "black", "white", "checks", "star"), Signature("circle", "white", "black", "plain", "cross"))


def _pixels(path_or_img) -> np.ndarray:
    img = path_or_img if isinstance(path_or_img, Image.Image) else Image.open(path_or_img)
    return np.asarray(img.convert("RGB"), np.float32)


def _level(diff: float) -> float:
    return 1.0 if diff <= EXACT else 0.5 if diff <= CLOSE else 0.0


class WorldJudge:
    def __init__(self, keys: dict[str, AnswerKey]):
        self.keys = keys

    def _key(self, sample_id: str) -> AnswerKey | str:
        key = self.keys.get(str(sample_id))
        return key if key is not None else f"world judge: no answer key for sample {sample_id!r}"

    def judge_image(self, sample_id: str, generated_path: str, gt_path: str) -> JudgeScores | str:
        key = self._key(sample_id)
        if isinstance(key, str):
            return key
        try:
            gen, gt = _pixels(generated_path), _pixels(gt_path)
        except OSError as e:
            return f"world judge: unreadable image ({e})"
        aesthetics = 1.0
        if gen.shape != gt.shape:
            gen = np.asarray(Image.fromarray(gen.astype(np.uint8)).resize(gt.shape[1::-1]), np.float32)
            aesthetics = 0.5
        diff = np.abs(gen - gt).mean(axis=-1)
        n = len(key.signatures)
        subject_mask = np.zeros(diff.shape, bool)
        for standin in _STANDINS:  # where the subjects are: what changes when they are replaced
            other = _pixels(render_scene([standin] * n, key.scene, key.text))
            subject_mask |= np.abs(other - gt).mean(axis=-1) > 0
        visual = _level(float(diff[subject_mask].mean()))
        text = None
        if key.text:
            blank = _pixels(render_scene(key.signatures, key.scene, "#" * len(key.text)))
            label = np.abs(blank - gt).mean(axis=-1) > 0
            ys, xs = np.nonzero(label)
            box = diff[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            text = _level(float(box.mean()))
        frame = np.ones(diff.shape, bool)
        frame[6:-6, 6:-6] = False
        present = [float(diff[frame].mean()) <= CLOSE, visual > 0] + ([text > 0] if text is not None else [])
        faithfulness = snap_half(sum(present) / len(present))
        return JudgeScores(faithfulness, visual, text, aesthetics,
                           rationale=f"subject diff {diff[subject_mask].mean():.1f}, frame diff {diff[frame].mean():.1f}")

    def judge_text(self, sample_id: str, answer: Answer, images: Sequence[ImageRef] = ()) -> TextScore | str:
        key = self._key(sample_id)
        if isinstance(key, str):
            return key
        by_id = {im.img_id: im for im in images}
        notes = " ".join(r.note + " " + getattr(by_id.get(r.img_id), "title", "") for r in answer.references)
        parts = subject_parts(answer.gen_prompt, len(key.signatures))
        checks = []
        parts += [(-1, "")] * (len(key.names) - len(parts))  # subjects the answer never describes
        for name, sig, (_, part) in zip(key.names, key.signatures, parts):
            checks.append(name.lower() in (answer.gen_prompt + " " + notes).lower())
            checks.append(signature_from_text(part) == sig)
        if key.text:
            checks.append(f'"{key.text.lower()}"' in answer.gen_prompt.lower())
        score = snap_text_score(sum(checks) / len(checks))
        return TextScore(score, rationale=f"{sum(checks)} of {len(checks)} checks")


def snap_half(x: float) -> float:
    """The nearest of {0, 0.5, 1}."""
    return min((0.0, 0.5, 1.0), key=lambda v: abs(v - x))
