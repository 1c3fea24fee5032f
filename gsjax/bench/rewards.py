"""Rewards for a batch of trajectories: `RewardComputer.score_many` (concurrent) against scoring
them one by one, with the `http` generator and the `openai` judge over loopback.

    python -m gsjax.bench.rewards                 # 48 trajectories, 300 ms per request, ~1 min on 2 cores
    python -m gsjax.bench.rewards --trajectories 8 --latency 0.02   # a smoke run

A small offline world is built in a temporary folder; each trajectory is an eval prompt's ideal
answer (its gen_prompt and its subjects' reference photos). The loopback servers of
gsjax/bench/loopback_servers.py stand in for the remote services, each request delayed by `--latency`:
`--servers` generator servers (`POST /generate`, rendering with the world's generator) and one
OpenAI-compatible judge (the world's judges). One reward is three requests (generate, image
judge, text judge), so the serial run takes at least 3 x latency per trajectory. `ideal` is the
concurrent run's lower bound from latency alone: ceil(trajectories / slots) x 3 x latency, where
slots = min(workers, servers x per-url slots). Run from the repository root (the servers live in
tests/).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gsjax.agent.types import Answer, AnswerRef, Termination
from gsjax.bench import loopback_servers
from gsjax.bench.common import Ratio, interleaved, print_table
from gsjax.rewards.compute import RewardComputer, RewardInput, ScoredEpisode
from gsjax.rewards.generator_http import HttpGenerator
from gsjax.rewards.judge_openai import OpenAIJudge
from gsjax.rewards.types import RewardStatus
from gsjax.world.build import build_world
from gsjax.world.prompts import read_truth



@dataclasses.dataclass(frozen=True)
class RewardsBench:
    ratio: Ratio  # concurrent rewards/s over serial rewards/s (= serial s / concurrent s)
    serial_s: float  # median wall time of the serial runs
    concurrent_s: float  # median wall time of the score_many runs
    ideal_s: float  # the concurrent run's lower bound from the injected latency
    failed: int  # rewards that ended `failed` (0 expected)
    mean_reward: float


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gsjax.bench.rewards", description=__doc__.split("\n\n")[0])
    p.add_argument("--trajectories", type=int, default=48)
    p.add_argument("--latency", type=float, default=0.3, help="seconds added to every request by each server")
    p.add_argument("--workers", type=int, default=16, help="RewardComputer threads")
    p.add_argument("--servers", type=int, default=2, help="generator servers")
    p.add_argument("--per-url", type=int, default=8, help="generator slots per server")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", type=int, default=0)
    return p.parse_args(argv)


def make_inputs(root: Path, n: int) -> list[RewardInput]:
    """`n` trajectories: the eval prompts' ideal answers, in turn."""
    keys = sorted((k for k in read_truth(root / "truth.json").values() if k.split == "eval"), key=lambda k: k.id)
    inputs = []
    for i in range(n):
        key = keys[i % len(keys)]
        refs = tuple(AnswerRef(f"IMG_{j + 1:03d}", f"{name} reference", str(root / "images" / Path(photos[0]).name))
                     for j, (name, photos) in enumerate(zip(key.names, key.reference_images)))
        inputs.append(RewardInput(key.id, key.prompt, str(root / key.gt_image), Termination.ANSWER,
                                  Answer(key.gen_prompt, refs), name=f"{i:03d}-{key.id}"))
    return inputs


def main(argv: Sequence[str] | None = None) -> RewardsBench:
    args = parse_args(argv)
    servers = loopback_servers
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "world"
        build_world(root, seed=3, n_train_entities=40, n_eval_entities=40, n_train_prompts=4,
                    n_eval_prompts=min(args.trajectories, 48))
        inputs = make_inputs(root, args.trajectories)
        render, verdicts = servers.world_renderer(root), servers.world_verdicts(root)
        gens = [servers.GeneratorServer(args.latency, render=render).start() for _ in range(args.servers)]
        judge_server = servers.JudgeServer(args.latency, verdicts=verdicts).start()
        try:
            generator = HttpGenerator([g.url for g in gens], per_url_concurrency=args.per_url, timeout_s=60)
            judge = OpenAIJudge(judge_server.url + "/v1", api_key_env="", timeout_s=60, max_tries=3,
                                max_in_flight=args.workers)
            computer = RewardComputer(generator, judge, Path(tmp) / "generated", workers=args.workers)
            runs: list[list[ScoredEpisode]] = []

            def serial() -> None:
                runs.append([computer.score(inp) for inp in inputs])

            def concurrent() -> None:
                runs.append(computer.score_many(inputs, progress=False))

            timings = interleaved({"serial": serial, "concurrent": concurrent}, repeats=args.repeats,
                                  warmup=args.warmup)
            peak = [g.max_in_flight for g in gens]
        finally:
            for server in (*gens, judge_server):
                server.stop()
    failed = max(sum(s.result.status is RewardStatus.FAILED for s in run) for run in runs)
    mean_reward = statistics.mean(s.result.reward for s in runs[-1])
    slots = min(args.workers, args.servers * args.per_url)
    ideal_s = math.ceil(len(inputs) / slots) * 3 * args.latency
    print(f"{len(inputs)} rewards (generate + image judge + text judge each), {args.latency * 1000:.0f} ms injected "
          f"per request, {args.workers} workers, {args.servers} generator servers x {args.per_url} slots")
    ratios = print_table(list(timings.values()), work=len(inputs), unit="rewards", baseline="serial")
    serial_s, concurrent_s = timings["serial"].median, timings["concurrent"].median
    print(f"serial / concurrent = {serial_s / concurrent_s:.1f}x; concurrent / ideal = {concurrent_s / ideal_s:.2f} "
          f"(ideal {ideal_s:.2f} s); failed rewards: {failed}; mean reward {mean_reward:.3f}; "
          f"peak requests in flight per generator server: {peak}")
    return RewardsBench(ratios["concurrent"], serial_s, concurrent_s, ideal_s, failed, mean_reward)


if __name__ == "__main__":
    main()
