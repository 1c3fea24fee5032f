"""`python -m gsjax.eval --config=configs/eval_knowgen.py` (or `configs/eval_wise.py`): run an
agent over a benchmark, generate, judge, aggregate, write the HTML report.

Every run also runs the no-search baseline (`eval.baseline`; its folder `workdir/none` is shared
by the agents evaluated in the same workdir) and prints both side by side. Runs resume: see
`gsjax.eval.runner`.

Staged (`eval.stage`): "generate" runs the agents and the generator and leaves the images to be
judged; "judge" builds no agent, toolbox or generator: it judges what the run folders hold, or,
with `data.results`, another agent's results file (`gsjax.eval.results_file`) into
workdir/<run_name> (default judged-<the file's folder>), with no baseline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import ml_collections

from gsjax import config as config_lib
from gsjax.agent.protocol import prompt_date
from gsjax.agent.texts import AgentTexts
from gsjax.eval.agents import NoSearchAgent, build_agent
from gsjax.eval.benchmarks import KnowGenBenchmark, WiseBenchmark, category_table, knowgen_table, wise_table
from gsjax.eval.results_file import match, read_results
from gsjax.eval.runner import STAGES, Benchmark, EvalItem, Runner
from gsjax.fileio import text_or_default
from gsjax.rewards.backends import build_generator, build_judge, judge_rubrics
from gsjax.rewards.types import RewardSettings

log = logging.getLogger("gsjax.eval")
WISE_JUDGES = ("local", "openai")


def world_dir(cfg: ml_collections.ConfigDict) -> Path | None:
    """The offline world (built once into workdir/world unless data.world_dir names one), or None."""
    if not cfg.data.world:
        return None
    if cfg.data.world_dir:
        path = Path(cfg.data.world_dir)
        if not (path / "world.json").is_file():
            raise FileNotFoundError(f"data.world_dir {str(path)!r} is not a built world (no world.json); "
                                    "build one with python -m gsjax.world.build")
        return path
    from gsjax.world.assets import WorldSpec, build_world_once

    return build_world_once(Path(cfg.workdir) / "world", WorldSpec(**cfg.data.world_size.to_dict()))


def benchmark_file(cfg: ml_collections.ConfigDict, world: Path | None) -> Path:
    if cfg.data.benchmark:
        path = Path(cfg.data.benchmark)
    elif cfg.benchmark == "knowgen" and world is not None:
        path = world / "knowgen_eval.json"
    elif cfg.benchmark == "wise":
        raise ValueError("data.benchmark: a WISE prompt file is needed (Prompt, Explanation, Category, Subcategory, "
                         "prompt_id), e.g. --config.data.benchmark=/data/WISE/data_verified/merge.json")
    else:
        raise ValueError(f"data.benchmark: a {cfg.benchmark} file is needed (data.world is off)")
    if not path.is_file():
        raise FileNotFoundError(f"data.benchmark {str(path)!r} does not exist")
    return path


def build_benchmark(cfg: ml_collections.ConfigDict, world: Path | None, path: Path):
    if cfg.benchmark == "knowgen":
        return KnowGenBenchmark(path, build_judge(cfg.reward, world), cfg.data.limit)
    if cfg.benchmark == "wise":
        from gsjax.eval.wise_judge import LocalWiseJudge, OpenAIWiseJudge

        if cfg.reward.judge == "local":
            judge = LocalWiseJudge()
        elif cfg.reward.judge == "openai":
            judge = OpenAIWiseJudge(cfg.reward.judge_base_url, cfg.reward.judge_model, cfg.reward.judge_key_env,
                                    rubric=wise_rubric(cfg.reward))
        else:
            raise ValueError(f"reward.judge for WISE must be one of {WISE_JUDGES}, got {cfg.reward.judge!r}")
        return WiseBenchmark(path, judge, cfg.data.limit)
    raise ValueError(f"benchmark must be 'knowgen' or 'wise', got {cfg.benchmark!r}")


def wise_rubric(reward: ml_collections.ConfigDict) -> str:
    """The WISE judge's system prompt from the file `reward.wise_rubric` names ("" = gsjax's own)."""
    return text_or_default(reward.get("wise_rubric", ""), "reward.wise_rubric")


def texts_digest(cfg: ml_collections.ConfigDict) -> str:
    """A digest of the texts read from files (agent.texts, the judges' rubrics); "" when every
    text is gsjax's own."""
    texts = AgentTexts.from_files(cfg.agent.get("texts", {})).recorded() | {
        k: v for k, v in judge_rubrics(cfg.reward).items() if v}
    if wise := wise_rubric(cfg.reward):
        texts["wise_rubric"] = wise
    if not texts:
        return ""
    return hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest()[:16]


def run_name(cfg: ml_collections.ConfigDict) -> str:
    if cfg.run_name:
        return cfg.run_name
    a = cfg.agent
    if a.backend == "policy":
        return f"policy-{Path(a.policy).name}"
    if a.backend == "openai":
        return f"openai-{a.model.replace('/', '_')}"
    return a.backend


def _toolbox(cfg: ml_collections.ConfigDict, world: Path | None):
    from gsjax.agent.policy import recorded_local_path
    from gsjax.agent.tools import ToolsConfig, build_toolbox

    values = cfg.tools.to_dict()
    if values.get("backend") == "local" and not values.get("world_dir"):
        if world is None:
            raise ValueError("tools.backend='local' needs the offline world (data.world) or tools.world_dir")
        values["world_dir"] = str(world)
    values["image_dir"] = values.get("image_dir") or str(Path(cfg.workdir) / "tool_images")
    if not values.get("local_path"):  # "": as the policy was trained to read it
        values["local_path"] = recorded_local_path(cfg.agent.policy) if cfg.agent.backend == "policy" else "full"
    return build_toolbox(ToolsConfig.from_dict(values))


def _base_fingerprint(cfg: ml_collections.ConfigDict, path: Path) -> dict[str, Any]:
    base = {"benchmark": str(path.resolve()), "generator": cfg.reward.generator, "judge": cfg.reward.judge,
            "limit": cfg.data.limit}
    if digest := texts_digest(cfg):  # a run spoken to or judged with other words is another run
        base["texts"] = digest
    return base


def planned_runs(cfg: ml_collections.ConfigDict, base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(run name, fingerprint) of each agent's run, the no-search baseline first when it runs."""
    runs = []
    if cfg.eval.baseline and cfg.agent.backend != "none":
        runs.append(("none", base | {"agent": "none"}))
    a = cfg.agent
    runs.append((run_name(cfg), base | {"agent": a.backend, "policy": a.policy if a.backend == "policy" else "",
                                        "model": a.model if a.backend == "openai" else ""}))
    return runs


def _run_agents(cfg: ml_collections.ConfigDict, world: Path | None, bench: Benchmark, items: list[EvalItem],
                base: dict[str, Any], settings: RewardSettings, progress: bool) -> dict[str, dict[str, Any]]:
    """Stages "all" and "generate": each planned run's agent, then the generator (and the judge)."""
    generator = build_generator(cfg.reward, world)
    today = prompt_date(cfg.agent.today)
    workdir = Path(cfg.workdir)
    toolbox = _toolbox(cfg, world) if cfg.agent.backend != "none" else None
    agent = build_agent(cfg.agent, toolbox, world, today)
    runs = planned_runs(cfg, base)
    agents = [NoSearchAgent()] * (len(runs) - 1) + [agent]
    summaries: dict[str, dict[str, Any]] = {}
    try:
        for (name, fingerprint), ag in zip(runs, agents):
            runner = Runner(bench, ag, generator, workdir / name, stage=cfg.eval.stage, settings=settings,
                            concurrency=cfg.eval.concurrency, progress=progress, fingerprint=fingerprint)
            config_lib.save(cfg, workdir / name / "config.json")
            summaries[name] = runner.run(items)
    finally:
        agent.close()
        if toolbox is not None:
            toolbox.close()
    return summaries


def _judge_folders(cfg: ml_collections.ConfigDict, bench: Benchmark, items: list[EvalItem], base: dict[str, Any],
                   progress: bool) -> dict[str, dict[str, Any]]:
    """Stage "judge" without a results file: the planned runs' folders, their pending images and
    failed judge calls (a baseline folder that was never generated is passed over)."""
    workdir = Path(cfg.workdir)
    summaries: dict[str, dict[str, Any]] = {}
    for name, fingerprint in planned_runs(cfg, base):
        log = workdir / name / "results.jsonl"
        if not log.is_file():
            if name == "none" and cfg.agent.backend != "none":
                continue
            raise FileNotFoundError(f"eval.stage='judge': {log} does not exist, so there is nothing to judge; "
                                    "generate first (--config.eval.stage=generate) or name a results file "
                                    "(--config.data.results=...)")
        runner = Runner(bench, None, None, workdir / name, stage="judge", name=name,
                        concurrency=cfg.eval.concurrency, progress=progress, fingerprint=fingerprint)
        summaries[name] = runner.run(items)
    return summaries


def _judge_file(cfg: ml_collections.ConfigDict, bench: Benchmark, items: list[EvalItem], path: Path,
                base: dict[str, Any], progress: bool) -> dict[str, dict[str, Any]]:
    """Stage "judge" of `data.results` (the reference's results.json or a gsjax results.jsonl) into
    workdir/<run_name> (default judged-<the file's folder>)."""
    results = Path(cfg.data.results)
    source, extra = match(read_results(results), items, results, path)
    name = cfg.run_name or f"judged-{results.resolve().parent.name}"
    fingerprint = {k: v for k, v in base.items() if k != "generator"} | {"agent": "results file",
                                                                        "results": str(results.resolve())}
    runner = Runner(bench, None, None, Path(cfg.workdir) / name, stage="judge", source=source, name=name,
                    concurrency=cfg.eval.concurrency, progress=progress, fingerprint=fingerprint)
    config_lib.save(cfg, Path(cfg.workdir) / name / "config.json")
    return {name: runner.run([*items, *extra])}


def run(cfg: ml_collections.ConfigDict, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Evaluate; returns {run name: summary} (the baseline first when it ran)."""
    stage = cfg.eval.stage
    if stage not in STAGES:
        raise ValueError(f"eval.stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if cfg.data.results and stage != "judge":
        raise ValueError(f"data.results names a results file to judge: it needs --config.eval.stage=judge "
                         f"(eval.stage is {stage!r})")
    world = world_dir(cfg)
    path = benchmark_file(cfg, world)
    bench = build_benchmark(cfg, world, path)
    items = bench.items()
    base = _base_fingerprint(cfg, path)
    if stage == "judge" and cfg.data.results:
        summaries = _judge_file(cfg, bench, items, path, base, progress)
    elif stage == "judge":
        summaries = _judge_folders(cfg, bench, items, base, progress)
    else:
        settings = RewardSettings(min_refs=cfg.reward.min_refs, max_refs=cfg.reward.max_refs)
        summaries = _run_agents(cfg, world, bench, items, base, settings, progress)
    workdir = Path(cfg.workdir)
    print(f"\n{cfg.benchmark} on {path} ({len(items)} items)")
    if stage == "generate":
        for name, s in summaries.items():
            print(f"{name}: {s['pending']} images generated, judging pending ({s['failed']} failed); judge them with "
                  "--config.eval.stage=judge")
        print(json.dumps({n: {"pending": s["pending"], "failed": s["failed"]} for n, s in summaries.items()}))
        return summaries
    if cfg.benchmark == "knowgen":
        print(knowgen_table(summaries))
        print(f"\nper category, {list(summaries)[-1]} (failures left out):")
        print(category_table(summaries[list(summaries)[-1]]))
    else:
        print(wise_table(summaries))
    for name, s in summaries.items():  # what failed, by kind (generation, judge, agent, bad row, ...)
        if s["failed"]:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(s["failure_kinds"].items()))
            print(f"{name}: {s['failed']} failed items ({kinds}); reasons in {workdir / name / 'results.jsonl'}")
        if s["pending"] or s["recorded"] < s["items"]:
            print(f"{name}: {s['pending']} items still to judge, {s['items'] - s['recorded']} never generated "
                  "(left out of the scores)")
    if cfg.eval.report:
        from gsjax.eval.report import write_report

        names = list(summaries)
        main_dir = workdir / names[-1]
        baseline_dir = workdir / "none" if names[0] == "none" and len(names) > 1 else None
        out = write_report(main_dir, baseline_dir, title=f"{cfg.benchmark}: {names[-1]}",
                           order=[it.id for it in items])
        print(f"\nreport: {out}")
    print(json.dumps({n: _headline(s) for n, s in summaries.items()}))
    return summaries


def _headline(s: dict[str, Any]) -> dict[str, Any]:
    if s["benchmark"] == "knowgen":
        return {"k_score": s["k_score"], "k_score_strict": s["k_score_strict"], "failed": s["failed"]}
    return {p: {"overall": s[p]["overall"], "strict": s[p]["overall_strict"]} for p in ("paper", "verified")}


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = config_lib.cli(argv, "configs/eval_knowgen.py", __doc__)
    try:
        run(cfg)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])



