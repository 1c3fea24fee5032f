"""One GRPO step end to end: prompts -> group rollouts -> rewards -> one learner update, plus the
held-out evaluation that uses the same rollout and reward code.

The learner's current parameters go to the sampler before each rollout; rollouts are seeded per
step, so a step redone after a resume samples exactly what it sampled the first time.

With several processes, each one is given its own share of the prompts (all samples of a prompt
on one process), rolls them out on its own devices and scores them, so each tool, generator and
judge call happens once; the per-episode numbers are then gathered, so every process computes the
same advantages and the same step metrics.

A vision-language policy's trajectories keep the pixels it was shown (`Trajectory.pixel_values`,
`image_grids`); their samples pass them on, so the learner scores the same images.

With `rollouts_dir`, each step's episodes go on record (`gsjax.rl.records`: `step_0001.jsonl`,
each trajectory with its reward parts and the advantage the learner used).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gsjax.agent.rollout import RolloutEngine, Task, Trajectory
from gsjax.agent.types import Termination
from gsjax.parallel import allgather_rows
from gsjax.rewards.compute import RewardComputer, RewardInput, ScoredEpisode
from gsjax.rewards.types import RewardStatus
from gsjax.rl.grpo import filtered_after_advantages
from gsjax.rl.records import step_file, step_records, write_step
from gsjax.rl.trainer import GRPOTrainer, Sample, step_statistics


@dataclasses.dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    gt_image: str


def reward_input(prompt: Prompt, t: Trajectory, tag: str) -> RewardInput:
    return RewardInput(prompt.id, prompt.prompt, prompt.gt_image, t.termination, t.answer, tuple(t.shown),
                       name=f"{tag}-{prompt.id}-g{t.task.group_index}")


@dataclasses.dataclass
class Rollouts:
    """A batch of episodes and their rewards; `rollout_s` until the last episode ended, `reward_s`
    the wait for rewards after that (rewards of finished episodes run while the others decode)."""

    trajectories: list[Trajectory]
    scored: list[ScoredEpisode]
    rollout_s: float
    reward_s: float


def rollout_and_score(engine: RolloutEngine, rewards: RewardComputer, prompts: Sequence[Prompt],
                      tasks: Sequence[Task], tag: str, seed: int | None, progress: bool = False) -> Rollouts:
    """Task i (answering `prompts[i]`) rolled out and scored: each episode's reward (generation and
    judging) is submitted the moment the episode ends, on `rewards.workers` threads, so a step waits
    for the rewards of the last episodes only, not for all of them after all the rollouts."""
    if len(prompts) != len(tasks):
        raise ValueError(f"{len(prompts)} prompts for {len(tasks)} tasks; expected one per task")
    futures: list[cf.Future | None] = [None] * len(tasks)
    with cf.ThreadPoolExecutor(max_workers=max(1, min(rewards.workers, len(tasks))),
                               thread_name_prefix="reward") as pool:
        def finished(i: int, t: Trajectory) -> None:
            futures[i] = pool.submit(rewards.score, reward_input(prompts[i], t, tag))

        t0 = time.perf_counter()
        trajs = engine.run(tasks, progress=progress, seed=seed, on_finished=finished)
        t1 = time.perf_counter()
        bar = tqdm(total=len(tasks), desc=f"rewards {tag}", disable=not progress, leave=False)
        for fut in cf.as_completed(futures):
            bar.update(1)
        bar.close()
        scored = [f.result() for f in futures]
    return Rollouts(trajs, scored, t1 - t0, time.perf_counter() - t1)


# One row of numbers per episode: what the step and evaluation summaries are made of.
EPISODE_STATS = ("reward", "failed", "zero_by_rule", "image_part", "has_image", "text_part", "has_text", "answered",
                 "tool_calls", "tool_errors", "traj_tokens", "sampled_tokens", "sampled_nll")


def episode_stats(trajs: Sequence[Trajectory], scored: Sequence[ScoredEpisode]) -> np.ndarray:
    """[episodes, len(EPISODE_STATS)] for this process's episodes."""
    rows = []
    for t, s in zip(trajs, scored):
        r = s.result
        rows.append([r.reward, r.status is RewardStatus.FAILED, r.status is RewardStatus.ZERO_BY_RULE,
                     r.image_part or 0.0, r.image_part is not None, r.text_part or 0.0, r.text_part is not None,
                     t.termination is Termination.ANSWER, t.tool_calls, t.tool_errors, len(t.tokens), sum(t.sampled),
                     -sum(lp for lp, s_ in zip(t.behavior_logprobs or t.logprobs, t.sampled) if s_)])
    return np.asarray(rows, np.float64).reshape(len(rows), len(EPISODE_STATS))


def summarize(stats: np.ndarray) -> dict[str, float]:
    """Rollout and reward statistics of every episode (rows of `episode_stats`, all processes)."""
    col = {k: stats[:, i] for i, k in enumerate(EPISODE_STATS)}
    ok = col["failed"] == 0
    img, txt = ok & (col["has_image"] > 0), ok & (col["has_text"] > 0)

    def mean(x, where=None):
        x = x if where is None else x[where]
        return float(x.mean()) if len(x) else 0.0

    return {
        # NaN when every episode failed: there is no reward to report, and 0.0 would look like one.
        "reward": mean(col["reward"], ok) if ok.any() else float("nan"),
        "reward_strict": mean(np.where(ok, col["reward"], 0.0)),  # failures as 0
        "image_reward": mean(col["image_part"], img),
        "text_reward": mean(col["text_part"], txt),
        "failed": float((~ok).sum()),
        "zero_by_rule": float(col["zero_by_rule"].sum()),
        "answered": mean(col["answered"]),
        "tool_calls": mean(col["tool_calls"]),
        "tool_errors": mean(col["tool_errors"]),
        "traj_tokens": mean(col["traj_tokens"]),
        "response_tokens": mean(col["sampled_tokens"]),  # what the policy wrote, per episode
        # The policy's entropy per written token, as the mean -log p of the tokens it drew under the
        # distribution they were drawn from (after top-k / top-p): the Monte-Carlo estimate of its entropy.
        "entropy": float(col["sampled_nll"].sum() / max(col["sampled_tokens"].sum(), 1.0)),
    }


def gathered_summary(trajs: Sequence[Trajectory], scored: Sequence[ScoredEpisode]) -> tuple[dict[str, float], np.ndarray]:
    """The summary of every process's episodes, and their stats rows."""
    stats, _ = allgather_rows(episode_stats(trajs, scored))
    return summarize(stats), stats


def learner_samples(trajs: Sequence[Trajectory], scored: Sequence[ScoredEpisode], filters: frozenset[str]
                    ) -> list[Sample]:
    """The learner's samples, filtered as `filters` says (`gsjax.rl.grpo.parse_filtering`): with
    `failures_out` an infrastructure failure leaves the group statistics, otherwise it counts as
    reward 0 (as the reference's reward does); the masks take episodes out of the update after the
    advantages."""
    failed = [not s.result.in_group_statistics for s in scored]
    rewards = [0.0 if f else s.result.reward for f, s in zip(failed, scored)]
    masked = filtered_after_advantages([t.termination.value for t in trajs], failed, rewards, filters)
    out = "failures_out" in filters
    return [Sample(t.tokens, t.loss_mask, t.logprobs, t.sampled, t.task.prompt_id, r, failed=f and out, masked=bool(m),
                   pixel_values=t.pixel_values, image_grids=t.image_grids, behavior_logprobs=t.behavior_logprobs)
            for t, f, r, m in zip(trajs, failed, rewards, masked)]


class GRPOLoop:
    def __init__(self, trainer: GRPOTrainer, engine: RolloutEngine, rewards: RewardComputer, group_size: int,
                 rollouts_dir: Path | None = None, release_sampler: bool = True):
        if group_size < 2:
            raise ValueError(f"GRPO needs group_size >= 2 (advantages compare samples of a prompt), got {group_size}")
        self.trainer, self.engine, self.rewards, self.group_size = trainer, engine, rewards, group_size
        self.rollouts_dir = rollouts_dir  # None: no records
        # Free the sampler's weights copy and KV cache during the update (`rl.release_sampler`):
        # a step then holds the larger of its two phases, not both (gsjax.plan's resident figure).
        self.release_sampler = release_sampler

    def step(self, prompts: Sequence[Prompt], seed: int, progress: bool = False, number: int = 0) -> dict[str, float]:
        """One step on this process's share of the step's prompts (all processes call it); `number`
        names its record file (`rollouts_dir/step_0001.jsonl`, replaced when the step is redone)."""
        if self.rollouts_dir is not None and number < 1:
            raise ValueError(f"GRPOLoop.step: recording rollouts needs the step's number (>= 1), got {number}")
        expanded = [p for p in prompts for _ in range(self.group_size)]
        tasks = [Task(p.id, p.prompt, g) for p in prompts for g in range(self.group_size)]
        self.engine.sync_weights(self.trainer.model)
        done = rollout_and_score(self.engine, self.rewards, expanded, tasks, f"step{seed}", seed)
        trajs, scored = done.trajectories, done.scored
        if self.release_sampler:
            self.engine.release()
        t2 = time.perf_counter()
        samples = learner_samples(trajs, scored, self.trainer.cfg.filtering)
        learned = step_statistics(samples, self.trainer.cfg)  # the advantages the update uses, for the record too
        metrics = self.trainer.step(samples, learned)
        t3 = time.perf_counter()
        if self.rollouts_dir is not None:
            write_step(step_file(self.rollouts_dir, number),
                       step_records(number, expanded, trajs, scored, samples, learned))
        summary, stats = gathered_summary(trajs, scored)
        metrics.update(summary)
        sampled = float(stats[:, EPISODE_STATS.index("sampled_tokens")].sum())
        tokens = float(stats[:, EPISODE_STATS.index("traj_tokens")].sum())
        metrics.update(rollout_s=done.rollout_s, reward_s=done.reward_s, update_s=t3 - t2,
                       sample_tokens_per_s=sampled / max(done.rollout_s, 1e-9),
                       train_tokens_per_s=tokens / max(t3 - t2, 1e-9))
        return metrics


def evaluate(engine: RolloutEngine, rewards: RewardComputer, prompts: Sequence[Prompt], tag: str, seed: int = 0,
             progress: bool = True) -> dict[str, float]:
    """Mean held-out reward of one sample per prompt (failures left out; `reward_strict` counts
    them as 0), over this process's share of the prompts and every other process's."""
    done = rollout_and_score(engine, rewards, prompts, [Task(p.id, p.prompt) for p in prompts], tag, seed, progress)
    return gathered_summary(done.trajectories, done.scored)[0]
