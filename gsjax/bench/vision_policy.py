"""Does seeing the photos help? A tiny Qwen3-VL policy against a text-only one of the same decoder,
trained the same way on the offline world's image-only prompts (docs/vision.md).

    python -m gsjax.bench.vision_policy                  # seeds 0 and 1, about an hour on 2 cores
    python -m gsjax.bench.vision_policy --seeds 0 --root runs/vision_policy -- --config.sft.steps=200

For each seed and each arm (`vlm`: `configs/grpo.py:image_only`; `text`: the same with
`model.tiny_vision.enabled=False`), it trains in `ROOT/<arm>_s<seed>` (SFT, GRPO, the in-training
held-out evaluation; a finished run is reused, as `gsjax.train` reuses finished phases), then scores
both policies with `gsjax.eval` (configs/eval_knowgen.py:image_only, on that run's own world, no-search
baseline beside them) and prints one table: held-out mean reward and K-Score per arm, seed and phase,
and the VLM's margin over the text-only policy in each seed. Everything also goes to
`ROOT/comparison.json`. Arguments after `--` are passed to every training run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ARMS = {"vlm": "True", "text": "False"}
PHASES = ("sft", "grpo")


def train(workdir: Path, arm: str, seed: int, extra: list[str]) -> dict:
    """One training run (reused when its summary exists); its summary.json."""
    summary = workdir / "summary.json"
    if not summary.is_file():
        cmd = [sys.executable, "-m", "gsjax.train", "--config=configs/grpo.py:image_only",
               f"--config.workdir={workdir}", f"--config.seed={seed}",
               f"--config.model.tiny_vision.enabled={ARMS[arm]}", *extra]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[2], env=os.environ)
    return json.loads(summary.read_text())


def k_scores(workdir: Path, baseline: bool) -> dict[str, float]:
    """K-Score of the run's two policies (and of the no-search baseline) on its held-out prompts."""
    from gsjax import config as config_lib
    from gsjax.eval.cli import run

    out: dict[str, float] = {}
    for phase in PHASES:
        cfg = config_lib.load("configs/eval_knowgen.py:image_only")
        cfg.workdir = str(workdir / "eval")
        cfg.data.world_dir = str(workdir / "world")
        cfg.agent.backend = "policy"
        cfg.agent.policy = str(workdir / f"policy_{phase}")
        cfg.run_name = phase
        cfg.eval.baseline = baseline and phase == PHASES[0]
        cfg.eval.report = False
        summaries = run(cfg, progress=False)
        out[phase] = summaries[phase]["k_score"]
        if "none" in summaries:
            out["none"] = summaries["none"]["k_score"]
    return out


def table(rows: list[dict]) -> str:
    lines = ["| arm | seed | held-out reward SFT | GRPO | K-Score SFT | GRPO |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['seed']} | {r['reward']['sft']:.3f} | {r['reward']['grpo']:.3f} | "
                     f"{r['k_score']['sft']:.3f} | {r['k_score']['grpo']:.3f} |")
    by = {(r["arm"], r["seed"]): r for r in rows}
    for seed in sorted({r["seed"] for r in rows}):
        if ("vlm", seed) in by and ("text", seed) in by:
            v, t = by["vlm", seed], by["text", seed]
            d = {k: {p: v[k][p] - t[k][p] for p in PHASES} for k in ("reward", "k_score")}
            lines.append(f"| vlm - text | {seed} | {d['reward']['sft']:+.3f} | {d['reward']['grpo']:+.3f} | "
                         f"{d['k_score']['sft']:+.3f} | {d['k_score']['grpo']:+.3f} |")
    base = sorted({r["k_score"]["none"] for r in rows if "none" in r["k_score"]})
    if base:
        lines.append(f"\nno-search baseline K-Score: {', '.join(f'{b:.3f}' for b in base)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(prog="python -m gsjax.bench.vision_policy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--root", type=Path, default=Path("runs/vision_policy"))
    ap.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=["vlm", "text"])
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            workdir = (args.root / f"{arm}_s{seed}").absolute()
            summary = train(workdir, arm, seed, extra)
            reward = {p: summary["heldout"][p]["reward_strict"] for p in PHASES}
            # every run builds the same world (one world seed): its no-search baseline is scored once
            rows.append({"arm": arm, "seed": seed, "reward": reward, "k_score": k_scores(workdir, baseline=not rows),
                         "heldout": summary["heldout"], "minutes": summary["minutes"]})
            (args.root / "comparison.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\nimage-only prompts: held-out mean reward (failures as 0) and K-Score, per arm and seed")
    print(table(rows))


if __name__ == "__main__":
    main()
