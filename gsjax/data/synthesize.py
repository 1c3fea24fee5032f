"""The data pipeline: a teacher agent runs over prompts, its trajectories are judged with the
reward (generator + image and text judges, `RewardComputer`), filtered by reward, and written in
the released formats.

  python -m gsjax.data.synthesize
      The offline default: the scripted expert on the offline world's training prompts
      (rl_data.json of the world of configs/eval_knowgen.py), world generator and judges.
  python -m gsjax.data.synthesize --prompts=/data/prompts.json --config=configs/eval_knowgen.py:openai \
      --config.agent.model=gpt-4.1
      An OpenAI-compatible teacher with real tools, generator and judge.

Options: --prompts=FILE (rl_data format: id, prompt, gt_image), --out=DIR (default
runs/synthesize), --min-reward=R (default 0.8), --limit=N; every --config.* key of the eval config.

Writes into --out:
  sft_data.json  the teacher's trajectories whose reward is at least --min-reward (sharegpt, the
                 reference's SFT format, images as <image> markers + paths)
  rl_data.json   the other prompts that could be scored (their trajectories fell below the
                 threshold), for GRPO: disjoint from the SFT prompts, as in the default training
  synth.jsonl    one line per prompt: id, termination, reward, status and reason
Prompts whose scoring failed (missing ground truth, generator or judge failure, environment error)
are in neither file.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import ml_collections
from tqdm import tqdm

from gsjax import config as config_lib
from gsjax.agent.types import Termination
from gsjax.data.formats import RLItem, read_rl_data, write_rl_data, write_sft_data
from gsjax.eval.agents import build_agent
from gsjax.eval.cli import _toolbox, world_dir
from gsjax.fileio import atomic_write
from gsjax.rewards.backends import build_rewards
from gsjax.rewards.compute import RewardInput
from gsjax.rewards.types import RewardStatus
from gsjax.world.expert import to_sft_example

TEACHERS = ("expert", "openai")
USAGE = ("usage: python -m gsjax.data.synthesize [--prompts=FILE] [--out=DIR] [--min-reward=R] [--limit=N] "
         "[--config=configs/eval_knowgen.py[:preset]] [--config.key=value ...]")


def synthesize(cfg: ml_collections.ConfigDict, out_dir: Path | str, prompts: Path | str | None = None,
               min_reward: float = 0.8, limit: int = 0, progress: bool = True) -> dict[str, Any]:
    if cfg.agent.backend not in TEACHERS:
        raise ValueError(f"the teacher (agent.backend) must be one of {TEACHERS}, got {cfg.agent.backend!r}")
    out_dir = Path(out_dir)
    world = world_dir(cfg)
    if prompts is None:
        if world is None:
            raise ValueError("--prompts is needed when data.world is off")
        prompts = world / "rl_data.json"
    items = read_rl_data(prompts)
    items = items[:limit] if limit else items
    today = datetime.date.fromisoformat(cfg.agent.today) if cfg.agent.today else datetime.date.today()
    rewards = build_rewards(cfg.reward, world, out_dir / "generated")
    toolbox = _toolbox(cfg, world)
    agent = build_agent(cfg.agent, toolbox, world, today)

    def one(item: RLItem):
        run = agent.run(str(item.id), item.prompt)
        if run.error:
            return run, None
        scored = rewards.score(RewardInput(str(item.id), item.prompt, item.gt_image, Termination(run.termination),
                                           run.answer, tuple(run.shown)))
        return run, scored.result

    try:
        with cf.ThreadPoolExecutor(max_workers=max(1, cfg.eval.concurrency)) as pool:
            results = list(tqdm(pool.map(one, items), total=len(items), desc="teacher", disable=not progress))
    finally:
        agent.close()
        toolbox.close()
    sft, rl, lines = [], [], []
    for item, (run, result) in zip(items, results):
        status = "failed" if result is None else result.status.value
        reason = run.error if result is None else result.reason
        reward = None if result is None else result.reward
        lines.append({"id": item.id, "termination": run.termination, "reward": reward, "status": status,
                      "reason": reason, "tool_calls": run.tool_calls})
        if result is None or result.status is RewardStatus.FAILED:
            continue
        if result.reward >= min_reward and run.episode is not None:
            sft.append(to_sft_example(run.episode))
        else:
            rl.append(item)
    write_sft_data(out_dir / "sft_data.json", sft)
    write_rl_data(out_dir / "rl_data.json", rl)
    atomic_write(out_dir / "synth.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode("utf-8"))
    scored = [x["reward"] for x in lines if x["status"] != "failed"]
    return {"prompts": len(items), "sft": len(sft), "rl": len(rl), "failed": len(items) - len(scored),
            "mean_reward": sum(scored) / len(scored) if scored else None, "min_reward": min_reward,
            "out": str(out_dir)}


def main(argv: list[str]) -> None:
    opts: dict[str, str] = {}
    rest = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in ("--prompts", "--out", "--min-reward", "--limit") and eq:
            opts[name] = value
        elif arg.startswith("--config"):
            rest.append(arg)
        else:
            raise SystemExit(f"unknown argument {arg!r}\n{USAGE}")
    cfg = config_lib.cli(rest, "configs/eval_knowgen.py")
    try:
        summary = synthesize(cfg, opts.get("--out", "runs/synthesize"), opts.get("--prompts"),
                             float(opts.get("--min-reward", 0.8)), int(opts.get("--limit", 0)))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
