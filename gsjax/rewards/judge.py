"""The judge interface and its offline-world backend. A judge returns scores, or a string that
says why it failed (a failure, distinct from a score of 0). The OpenAI-compatible backend lives
in `judge_openai.py`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from gsjax.agent.types import Answer, ImageRef
from gsjax.rewards.types import JudgeScores, TextScore


class Judge(Protocol):
    def judge_image(self, sample_id: str, question: str, generated_path: str, gt_path: str) -> JudgeScores | str: ...

    def judge_text(self, sample_id: str, question: str, gt_path: str, answer: Answer,
                   images: Sequence[ImageRef] = ()) -> TextScore | str: ...


class WorldJudgeBackend:
    """The world's judges (answer keys + pixels) behind the judge interface."""

    def __init__(self, world_root: Path | str):
        from gsjax.world.judge import WorldJudge
        from gsjax.world.prompts import read_truth

        self._judge = WorldJudge(read_truth(Path(world_root) / "truth.json"))

    def judge_image(self, sample_id, question, generated_path, gt_path):
        return self._judge.judge_image(str(sample_id), generated_path, gt_path)

    def judge_text(self, sample_id, question, gt_path, answer, images=()):
        return self._judge.judge_text(str(sample_id), answer, images)
