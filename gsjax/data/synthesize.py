r"""The data pipeline: a teacher agent runs over prompts, its trajectories are judged with the
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
  synth.jsonl    one line per prompt, appended (and fsynced) the moment it is scored: id, prompt,
                 termination, reward, status and reason, and the trajectory as a sharegpt row
  sft_data.json  the teacher's trajectories whose reward is at least --min-reward (sharegpt, the
                 reference's SFT format, images as <image> markers + paths)
  rl_data.json   the other prompts that could be scored (their trajectories fell below the
                 threshold), for GRPO: disjoint from the SFT prompts, as in the default training
Prompts whose scoring failed (missing ground truth, generator or judge failure, environment error,
an agent that raised) are in neither file. Rerunning resumes: prompts already in synth.jsonl are not
run again (a killed or Ctrl-C'd run loses only the prompts in flight), and a rerun with another
--min-reward re-filters the recorded trajectories without calling the teacher. run.json pins the
prompts file, teacher, generator and judge; a rerun with another is refused.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import sys
from pathlib import Path
from typing import Any

import ml_collections
from tqdm import tqdm

from gsjax import config as config_lib
from gsjax.agent.protocol import prompt_date
from gsjax.agent.types import Termination
from gsjax.data.formats import RLItem, parse_sft_row, read_rl_data, sft_row, write_rl_data, write_sft_data
from gsjax.eval.agents import build_agent
from gsjax.eval.cli import _toolbox, world_dir
from gsjax.fileio import ResultsLog, pin_run
from gsjax.rewards.backends import build_rewards
from gsjax.rewards.compute import RewardInput
from gsjax.rewards.types import RewardStatus
from gsjax.world.expert import to_sft_example

TEACHERS = ("expert", "openai")
FAILED = RewardStatus.FAILED.value
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
    log = ResultsLog(out_dir / "synth.jsonl")
    done = log.recorded_ids([str(it.id) for it in items], f"{prompts}: prompt")
    pin_run(out_dir, {"prompts": str(Path(prompts).resolve()), "teacher": cfg.agent.backend,
                      "model": cfg.agent.model if cfg.agent.backend == "openai" else "",
                      "generator": cfg.reward.generator, "judge": cfg.reward.judge}, elsewhere="another --out")
    todo = [it for it in items if str(it.id) not in done]
    if todo:
        _run_teacher(cfg, world, todo, log, out_dir, progress)
    by_id = log.by_id()  # id -> (its line in synth.jsonl, the record)
    recorded = [(item, *by_id[str(item.id)]) for item in items if str(item.id) in by_id]
    lines = [line for _, _, line in recorded]
    sft, rl = [], []
    for item, n, line in recorded:
        if line["status"] == FAILED:
            continue
        if line["reward"] >= min_reward and line["sft"] is not None:
            sft.append(parse_sft_row(log.path, n, line["sft"]))
        else:
            rl.append(item)
    write_sft_data(out_dir / "sft_data.json", sft)
    write_rl_data(out_dir / "rl_data.json", rl)
    scored = [x["reward"] for x in lines if x["status"] != FAILED]
    return {"prompts": len(items), "sft": len(sft), "rl": len(rl), "failed": len(items) - len(scored),
            "mean_reward": sum(scored) / len(scored) if scored else None, "min_reward": min_reward,
            "resumed": len(items) - len(todo), "out": str(out_dir)}


def _run_teacher(cfg: ml_collections.ConfigDict, world: Path | None, items: list[RLItem], log: ResultsLog,
                 out_dir: Path, progress: bool) -> None:
    """The teacher and the reward over `items`, `eval.concurrency` at a time; each prompt's line is
    appended by its own task as it finishes, so an interrupt keeps every finished one."""
    today = prompt_date(cfg.agent.today)
    rewards = build_rewards(cfg.reward, world, out_dir / "generated")
    toolbox = _toolbox(cfg, world)
    agent = build_agent(cfg.agent, toolbox, world, today)

    def one(item: RLItem) -> None:
        line = {"id": item.id, "prompt": item.prompt, "gt_image": item.gt_image, "teacher": agent.name,
                "termination": None, "tool_calls": 0, "reward": None, "status": FAILED, "reason": None, "sft": None}
        try:
            run = agent.run(str(item.id), item.prompt)
            line.update(termination=run.termination, tool_calls=run.tool_calls, reason=run.error)
            if not run.error:
                result = rewards.score(RewardInput(str(item.id), item.prompt, item.gt_image,
                                                   Termination(run.termination), run.answer, tuple(run.shown))).result
                line.update(reward=result.reward, status=result.status.value, reason=result.reason)
                if run.episode is not None and result.status is not RewardStatus.FAILED:
                    line["sft"] = sft_row(to_sft_example(run.episode))
        except Exception as e:  # an agent or backend bug: a failed prompt, the run goes on
            line.update(status=FAILED, reward=None, reason=f"{type(e).__name__}: {e}")
        log.append(line)

    pool = cf.ThreadPoolExecutor(max_workers=max(1, cfg.eval.concurrency), thread_name_prefix="teacher")
    try:
        futures = [pool.submit(one, it) for it in items]
        for fut in tqdm(cf.as_completed(futures), total=len(items), desc="teacher", disable=not progress):
            fut.result()
    finally:  # Ctrl-C: the prompts in flight finish and are recorded, the rest are not started
        pool.shutdown(wait=True, cancel_futures=True)
        agent.close()
        toolbox.close()


def main(argv: list[str]) -> None:
    opts: dict[str, str] = {}
    rest = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in ("--prompts", "--out", "--min-reward", "--limit") and eq:
            opts[name] = value
        elif arg.startswith("--config") or arg in config_lib.HELP_FLAGS:
            rest.append(arg)
        else:
            raise SystemExit(f"unknown argument {arg!r}\n{USAGE}")
    cfg = config_lib.cli(rest, "configs/eval_knowgen.py", __doc__)
    try:
        summary = synthesize(cfg, opts.get("--out", "runs/synthesize"), opts.get("--prompts"),
                             float(opts.get("--min-reward", 0.8)), int(opts.get("--limit", 0)))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
