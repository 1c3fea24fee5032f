"""Any checkpoint step of a training run as a policy folder: `python -m gsjax.export`.

  python -m gsjax.export --workdir runs/grpo --out runs/grpo/export_grpo_10 --step 10
      GRPO's step 10 (from runs/grpo/ckpt_grpo; `--phase sft` reads ckpt_sft), written as
      `gsjax.train` writes policy_sft/ and policy_grpo/: a Hugging Face folder (config.json,
      model.safetensors; a Qwen3-VL folder for a vision-language policy) with tokenizer.json, the
      chat template in tokenizer_config.json, and agent.json. transformers loads it, and so do
      `gsjax.eval`, `gsjax.generate` and `--config.model.path`.

Without --step, the latest checkpoint the phase holds; without --phase, GRPO's when the run has any,
else SFT's. Only the steps a run kept can be exported (`sft.keep_checkpoints`,
`rl.keep_checkpoints`). The run's own config.json says how to build the model the checkpoint fills.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import ml_collections

from gsjax.agent.policy import AGENT_FILE, Policy, load_policy, save_policy
from gsjax.agent.protocol import AgentLimits
from gsjax.agent.texts import AgentTexts
from gsjax.checkpoint import Checkpointer
from gsjax.parallel import make_mesh
from gsjax.tokenizer import Tokenizer

log = logging.getLogger("gsjax.export")

PHASES = {"sft": "ckpt_sft", "grpo": "ckpt_grpo"}


def run_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config a run saved beside its outputs (`workdir/config.json`)."""
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(workdir)!r} has no config.json: not a workdir of python -m gsjax.train")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def held_steps(workdir: Path, phase: str) -> list[int]:
    folder = workdir / PHASES[phase]
    if not folder.is_dir():
        return []
    with Checkpointer(folder) as ckpt:
        return ckpt.steps()


def _start_policy(cfg: ml_collections.ConfigDict, workdir: Path, phase: str, mesh) -> Policy:
    """The policy the phase started from, as the run built it: its weights are replaced, its
    architecture, tokenizer and agent settings are the export's."""
    from gsjax.train import initial_policy, rl_sampling, run_settings

    sft_out = workdir / "policy_sft"
    if phase == "grpo" and (sft_out / AGENT_FILE).is_file():
        return load_policy(sft_out, mesh, progress=True, **run_settings(cfg))
    if phase == "grpo" and cfg.sft.steps > 0:
        raise FileNotFoundError(f"{str(sft_out)!r} is missing: GRPO started from the SFT policy that folder holds")
    folder = workdir / "tokenizer" if cfg.data.world else Path(cfg.model.path)
    tok = Tokenizer.from_pretrained(folder)
    texts = AgentTexts.from_files(cfg.agent.texts)
    return initial_policy(cfg, tok, AgentLimits(**cfg.agent.limits), rl_sampling(cfg), mesh, texts)


def export(workdir: Path | str, out: Path | str, phase: str | None = None, step: int | None = None) -> Path:
    """Write checkpoint `step` of `phase` in run `workdir` to `out` as a policy folder; returns it."""
    from gsjax.train import grpo_trainer, restore_step, sft_trainer

    workdir, out = Path(workdir), Path(out)
    cfg = run_config(workdir)
    if phase is None:
        phase = "grpo" if held_steps(workdir, "grpo") else "sft"
    if phase not in PHASES:
        raise ValueError(f"--phase must be one of {sorted(PHASES)}, got {phase!r}")
    steps = held_steps(workdir, phase)
    if not steps:
        raise FileNotFoundError(f"{str(workdir / PHASES[phase])!r} holds no checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ValueError(f"{str(workdir / PHASES[phase])!r} holds steps {steps}, not {step} (a run keeps the last "
                         f"{'sft' if phase == 'sft' else 'rl'}.keep_checkpoints)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {str(out)!r} is not empty: choose a new folder")
    mesh = make_mesh({"data": -1})
    policy = _start_policy(cfg, workdir, phase, mesh)
    trainer = (sft_trainer if phase == "sft" else grpo_trainer)(cfg, policy.model, mesh)
    with Checkpointer(workdir / PHASES[phase]) as ckpt:
        record = restore_step(ckpt, trainer, step)
    save_policy(dataclasses.replace(policy, model=trainer.model), out)
    log.info("%s step %d of %s -> %s", phase.upper(), record["step"], workdir, out)
    return out


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    for noisy in ("absl", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(prog="python -m gsjax.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, type=Path, help="a run's folder (python -m gsjax.train's workdir)")
    ap.add_argument("--out", required=True, type=Path, help="the policy folder to write (new or empty)")
    ap.add_argument("--phase", choices=sorted(PHASES), help="default: grpo if the run has its checkpoints, else sft")
    ap.add_argument("--step", type=int, help="default: the latest the phase holds")
    args = ap.parse_args(argv)
    try:
        out = export(args.workdir, args.out, args.phase, args.step)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
