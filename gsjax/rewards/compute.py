"""One episode's reward, and a group's computed concurrently (generator and judge calls in
flight together), with progress shown. Every failure ends as a `failed` RewardResult with its
reason; nothing here raises into the training loop."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from gsjax.agent.types import Answer, ImageRef, Termination
from gsjax.rewards.generator import ImageGenerator, answer_request, plan_request, valid_ref_paths
from gsjax.rewards.judge import Judge
from gsjax.rewards.score import failed, image_reward, precheck, scored
from gsjax.rewards.types import JudgeScores, RewardResult, RewardSettings, RewardStatus, TextScore


@dataclasses.dataclass(frozen=True)
class RewardInput:
    sample_id: str
    question: str  # the original prompt
    gt_path: str
    termination: Termination
    answer: Answer | None
    images: tuple[ImageRef, ...] = ()  # what the trajectory's tools showed (titles for the text judge)
    name: str = ""  # file name stem of the generated image (default: sample id)


@dataclasses.dataclass(frozen=True)
class ScoredEpisode:
    result: RewardResult
    generated_path: str | None = None
    image_scores: JudgeScores | None = None
    text_score: TextScore | None = None


class RewardComputer:
    def __init__(self, generator: ImageGenerator, judge: Judge, out_dir: Path | str,
                 settings: RewardSettings = RewardSettings(), workers: int = 16):
        self.generator, self.judge, self.settings = generator, judge, settings
        self.out_dir = Path(out_dir)
        self.workers = workers

    def score(self, inp: RewardInput) -> ScoredEpisode:
        try:
            return self._score(inp)
        except Exception as e:  # a bug or a backend surprise: recorded, never raised
            return ScoredEpisode(failed(f"reward: {type(e).__name__}: {e}"))

    def _score(self, inp: RewardInput) -> ScoredEpisode:
        answer = inp.answer
        valid = valid_ref_paths(answer)
        early = precheck(inp.termination, answer, len(valid), self.settings)
        judge_text = self.settings.text_coef > 0
        if early is not None:
            if early.status is RewardStatus.FAILED or self.settings.no_answer == "zero":
                return ScoredEpisode(early)
            # "fallback": as evaluation sends it (the original prompt alone unless the answer is usable;
            # only an episode that ended with its answer has one)
            request = answer_request(answer if inp.termination is Termination.ANSWER else None, inp.question,
                                     self.settings)
            judge_text = judge_text and bool(request.ref_paths)
        else:
            request = plan_request(answer.gen_prompt, inp.question, valid, self.settings)
        if not Path(inp.gt_path).is_file():
            return ScoredEpisode(failed(f"ground truth image missing: {inp.gt_path}"))
        out = self.out_dir / f"{inp.name or inp.sample_id}.png"
        gen = self.generator.generate(request, out)
        if gen.path is None:
            return ScoredEpisode(failed(f"generation: {gen.error}"))
        scores = self.judge.judge_image(inp.sample_id, inp.question, gen.path, inp.gt_path)
        if isinstance(scores, str):
            return ScoredEpisode(failed(f"image judge: {scores}"), gen.path)
        text = None
        if judge_text:
            text = self.judge.judge_text(inp.sample_id, inp.question, inp.gt_path, answer, inp.images)
            if isinstance(text, str):
                return ScoredEpisode(failed(f"text judge: {text}"), gen.path, scores)
        # The text judge is off (text_coef 0): no text part; a fallback's is 0, there is no answer to judge
        text_part = None if self.settings.text_coef == 0 else text.score if text is not None else 0.0
        result = scored(image_reward(scores, self.settings), text_part, self.settings)
        return ScoredEpisode(result, gen.path, scores, text)

    def score_many(self, inputs: Sequence[RewardInput], progress: bool = True, desc: str = "rewards") -> list[ScoredEpisode]:
        """All inputs concurrently (bounded by `workers`), results in input order."""
        results: list[ScoredEpisode | None] = [None] * len(inputs)
        with cf.ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(inputs)))) as pool:
            futures = {pool.submit(self.score, inp): i for i, inp in enumerate(inputs)}
            bar = tqdm(total=len(inputs), desc=desc, disable=not progress, leave=False)
            for fut in cf.as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update(1)
            bar.close()
        return results  # type: ignore[return-value]
