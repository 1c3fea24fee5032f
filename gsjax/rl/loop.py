"""One GRPO step end to end: prompts -> group rollouts -> rewards -> one learner update, plus the
held-out evaluation that uses the same rollout and reward code.

The learner's current parameters go to the sampler before each rollout; rollouts are seeded per
step, so a step redone after a resume samples exactly what it sampled the first time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from gsjax.agent.rollout import RolloutEngine, Task, Trajectory
from gsjax.agent.types import Termination
from gsjax.rewards.compute import RewardComputer, RewardInput, ScoredEpisode
from gsjax.rewards.types import RewardStatus
from gsjax.rl.trainer import GRPOTrainer, Sample


@dataclasses.dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    gt_image: str


def score(rewards: RewardComputer, prompts: Sequence[Prompt], trajs: Sequence[Trajectory], tag: str,
          progress: bool = False) -> list[ScoredEpisode]:
    """Rewards of trajectories (trajectory i answers `prompts[i]`), computed concurrently."""
    inputs = [RewardInput(p.id, p.prompt, p.gt_image, t.termination, t.answer, tuple(t.shown),
                          name=f"{tag}-{p.id}-g{t.task.group_index}") for p, t in zip(prompts, trajs)]
    return rewards.score_many(inputs, progress=progress, desc=f"rewards {tag}")


def summarize(trajs: Sequence[Trajectory], scored: Sequence[ScoredEpisode]) -> dict[str, float]:
    """Rollout and reward statistics shared by training steps and evaluations."""
    res = [s.result for s in scored]
    ok = [r for r in res if r.status is not RewardStatus.FAILED]
    img = [r.image_part for r in ok if r.image_part is not None]
    txt = [r.text_part for r in ok if r.text_part is not None]
    return {
        "reward": float(np.mean([r.reward for r in ok])) if ok else 0.0,
        "reward_strict": float(np.mean([r.reward for r in res])) if res else 0.0,  # failures as 0
        "image_reward": float(np.mean(img)) if img else 0.0,
        "text_reward": float(np.mean(txt)) if txt else 0.0,
        "failed": float(len(res) - len(ok)),
        "zero_by_rule": float(sum(r.status is RewardStatus.ZERO_BY_RULE for r in res)),
        "answered": float(np.mean([t.termination is Termination.ANSWER for t in trajs])),
        "tool_calls": float(np.mean([t.tool_calls for t in trajs])),
        "tool_errors": float(np.mean([t.tool_errors for t in trajs])),
        "traj_tokens": float(np.mean([len(t.tokens) for t in trajs])),
    }


class GRPOLoop:
    def __init__(self, trainer: GRPOTrainer, engine: RolloutEngine, rewards: RewardComputer, group_size: int):
        if group_size < 2:
            raise ValueError(f"GRPO needs group_size >= 2 (advantages compare samples of a prompt), got {group_size}")
        self.trainer, self.engine, self.rewards, self.group_size = trainer, engine, rewards, group_size

    def step(self, prompts: Sequence[Prompt], seed: int, progress: bool = False) -> dict[str, float]:
        expanded = [p for p in prompts for _ in range(self.group_size)]
        tasks = [Task(p.id, p.prompt, g) for p in prompts for g in range(self.group_size)]
        self.engine.sampler.update_weights(self.trainer.model)
        t0 = time.perf_counter()
        trajs = self.engine.run(tasks, progress=progress, seed=seed)
        t1 = time.perf_counter()
        scored = score(self.rewards, expanded, trajs, f"step{seed}")
        t2 = time.perf_counter()
        samples = [Sample(t.tokens, t.loss_mask, t.logprobs, t.sampled, t.task.prompt_id, s.result.reward,
                          failed=not s.result.in_group_statistics) for t, s in zip(trajs, scored)]
        metrics = self.trainer.step(samples)
        t3 = time.perf_counter()
        sampled = sum(sum(t.sampled) for t in trajs)
        metrics.update(summarize(trajs, scored))
        metrics.update(rollout_s=t1 - t0, reward_s=t2 - t1, update_s=t3 - t2,
                       sample_tokens_per_s=sampled / max(t1 - t0, 1e-9),
                       train_tokens_per_s=sum(len(t.tokens) for t in trajs) / max(t3 - t2, 1e-9))
        return metrics


def evaluate(engine: RolloutEngine, rewards: RewardComputer, prompts: Sequence[Prompt], tag: str, seed: int = 0,
             progress: bool = True) -> dict[str, float]:
    """Mean held-out reward of one sample per prompt (failures left out; `reward_strict` counts
    them as 0)."""
    trajs = engine.run([Task(p.id, p.prompt) for p in prompts], progress=progress, seed=seed)
    return summarize(trajs, score(rewards, prompts, trajs, tag, progress))
