"""A GRPO step's rollouts and rewards: overlapped (each episode scored the moment it ends) against
scoring after the last rollout, with a slow image generator.

    python -m gsjax.bench.reward_overlap                       # 8 x 2 episodes, 2 s per image, 4 generators
    python -m gsjax.bench.reward_overlap --prompts 2 --group 2 --generator-latency 0.3 --repeats 1   # smoke

What runs: `gsjax.bench.rollout`'s replay (the real engine, sampler and tools, the expert's episodes
by teacher forcing, of lengths from the longest to the shortest as a policy's vary, tools `--latency`
s slower) and the real reward code
(`gsjax.rl.loop.rollout_and_score`, what a GRPO step runs), with the offline world's renderer
made `--generator-latency` s slower per image and `--reward-workers` images at a time (the
generator servers' capacity) and the world judge.

    rollout     the episodes alone
    rewards     the same episodes' rewards alone, all submitted at once
    sequential  rollouts, then their rewards (the step before rewards overlapped)
    overlapped  the step as it runs now

The target: overlapped / max(rollout, rewards) <= 1.2. An episode's reward cannot start before it
ends, so the last one adds its own generation to the step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from gsjax.bench.common import interleaved
from gsjax.bench.rollout import add_replay_flags, replay
from gsjax.rewards.compute import RewardComputer
from gsjax.rewards.generator import GenRequest, GenResult, WorldGenerator
from gsjax.rewards.judge import WorldJudgeBackend
from gsjax.rl.loop import Prompt, reward_input, rollout_and_score
from gsjax.world.prompts import read_truth


class SlowGenerator(WorldGenerator):
    """The world's renderer, `latency` seconds slower per image (a real generator's time)."""

    def __init__(self, world_root: Path, latency: float):
        super().__init__(world_root)
        self.latency = latency

    def generate(self, request: GenRequest, out_path: Path) -> GenResult:
        time.sleep(self.latency)
        return super().generate(request, out_path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gsjax.bench.reward_overlap", description=__doc__.split("\n\n")[0])
    # Real search and reader APIs take 1-5 s a call; 0.5 s per tool call keeps the bench short.
    add_replay_flags(p, prompts=8, group=2, latency=0.5)
    p.add_argument("--generator-latency", type=float, default=2.0, help="seconds added to every image")
    p.add_argument("--reward-workers", type=int, default=4, help="images generated at a time")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, replay(args, Path(tmp), spread=True) as r:
        truth = read_truth(r.world / "truth.json")
        gt = {k.id: str(r.world / k.gt_image) for k in truth.values()}
        prompts = [Prompt(t.prompt_id, t.prompt, gt[t.prompt_id]) for t in r.tasks]
        rewards = RewardComputer(SlowGenerator(r.world, args.generator_latency), WorldJudgeBackend(r.world),
                                 Path(tmp) / "gen", workers=args.reward_workers)
        last: list = []

        def rollout() -> None:
            last[:] = r.engine.run(r.tasks, seed=0)
            r.check(last)

        def score() -> None:
            rewards.score_many([reward_input(p, t, "b") for p, t in zip(prompts, last)], progress=False)

        def sequential() -> None:
            rollout()
            score()

        def overlapped() -> None:
            r.check(rollout_and_score(r.engine, rewards, prompts, r.tasks, "b", seed=0).trajectories)

        t = interleaved({"rollout": rollout, "rewards": score, "sequential": sequential, "overlapped": overlapped},
                        repeats=args.repeats, warmup=1)
    rounds = list(zip(*(t[k].seconds for k in ("rollout", "rewards", "sequential", "overlapped"))))
    over = [o / max(ro, rw) for ro, rw, _, o in rounds]
    gain = [s / o for _, _, s, o in rounds]

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    print(f"{len(r.tasks)} episodes ({args.prompts} prompts x {args.group}), {args.latency * 1000:.0f} ms per tool "
          f"call, {args.generator_latency:.1f} s per image, {args.reward_workers} images at a time, "
          f"{args.repeats} interleaved rounds")
    print(f"overlapped / max(rollout, rewards) = {med(over):.2f} [{min(over):.2f}-{max(over):.2f}]  (target <= 1.2)")
    print(f"sequential / overlapped            = {med(gain):.2f} [{min(gain):.2f}-{max(gain):.2f}]")
    print("per round (s): " + "; ".join(f"rollout {ro:.1f} rewards {rw:.1f} sequential {s:.1f} overlapped {o:.1f}"
                                         for ro, rw, s, o in rounds))
    return {"over_max": med(over), "sequential_over_overlapped": med(gain)}


if __name__ == "__main__":
    main()
