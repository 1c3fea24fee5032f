"""One agent run plus generation: `python -m gsjax.generate "a prompt"`.

  python -m gsjax.generate "Design a billboard that features the emblem of the Thabraler Athletic."
      The offline default: the world of configs/eval_knowgen.py (built once into
      runs/eval_knowgen/world if missing), the scripted expert as the agent (it solves the world's
      own prompts), the world renderer as the generator.
  python -m gsjax.generate "..." --config.agent.backend=policy --config.agent.policy=runs/grpo/policy_grpo
  python -m gsjax.generate "..." --config=configs/eval_knowgen.py:openai --config.agent.model=gpt-4.1
      Any agent and generator an evaluation config names (see configs/eval_knowgen.py).

Writes, into --out (default runs/generate/<prompt slug>/): image.png, trajectory.json (the
conversation, the images the tools showed, the termination) and answer.json (gen_prompt, the chosen
references, and what was sent to the generator). Without an answer, the original prompt goes to
the generator alone (the reference's fallback), and answer.json says so.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import ml_collections

from gsjax import config as config_lib
from gsjax.agent.protocol import prompt_date
from gsjax.data.formats import read_knowgen
from gsjax.eval.agents import ExpertAgent, build_agent
from gsjax.eval.cli import _toolbox, world_dir
from gsjax.eval.runner import answer_dict
from gsjax.fileio import atomic_write
from gsjax.rewards.backends import build_generator
from gsjax.rewards.generator import answer_request
from gsjax.rewards.types import RewardSettings

USAGE = 'usage: python -m gsjax.generate "a prompt" [--out=DIR] [--config=configs/eval_knowgen.py[:preset]] [--config.key=value ...]'


def slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def generate(prompt: str, cfg: ml_collections.ConfigDict, out_dir: Path | str) -> dict[str, Any]:
    """Run the agent on `prompt`, generate, write the three files; returns what was written."""
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    out_dir = Path(out_dir)
    world = world_dir(cfg)
    today = prompt_date(cfg.agent.today)
    toolbox = _toolbox(cfg, world) if cfg.agent.backend != "none" else None
    agent = build_agent(cfg.agent, toolbox, world, today)
    try:
        if isinstance(agent, ExpertAgent) and agent.key_for("", prompt) is None:
            examples = [it.prompt for it in read_knowgen(world / "knowgen_eval.json")[:3]]
            raise ValueError("the scripted expert solves only the offline world's own prompts; use one of them, e.g.\n  "
                             + "\n  ".join(examples) + "\nor another agent (--config.agent.backend=policy|openai|none)")
        run = agent.run("generate", prompt)
    finally:
        agent.close()
        if toolbox is not None:
            toolbox.close()
    answer = run.answer
    settings = RewardSettings(min_refs=cfg.reward.min_refs, max_refs=cfg.reward.max_refs)
    request = answer_request(answer, prompt, settings)
    gen = build_generator(cfg.reward, world).generate(request, out_dir / "image.png")
    trajectory = {"prompt": prompt, "agent": agent.name, "termination": run.termination, "error": run.error,
                  "tool_calls": run.tool_calls, "messages": run.messages,
                  "shown": [dataclasses.asdict(s) for s in run.shown]}
    answer_doc = {"answer": answer_dict(answer), "sent": {"prompt": request.prompt, "refs": list(request.ref_paths)},
                  "fallback": "original prompt, text-to-image" if not request.ref_paths else None,
                  "image": gen.path, "error": gen.error}
    for name, doc in (("trajectory.json", trajectory), ("answer.json", answer_doc)):
        atomic_write(out_dir / name, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    if gen.path is None:
        raise RuntimeError(f"generation failed: {gen.error} (trajectory and answer written to {out_dir})")
    return {"image": gen.path, "trajectory": str(out_dir / "trajectory.json"), "answer": str(out_dir / "answer.json"),
            "termination": run.termination}


def main(argv: list[str]) -> None:
    if any(a in config_lib.HELP_FLAGS for a in argv):
        config_lib.cli([a for a in argv if a.startswith("--config")] + ["--help"], "configs/eval_knowgen.py",
                       __doc__ + "\n" + USAGE)
    prompts = [a for a in argv if not a.startswith("--")]
    outs = [a.partition("=")[2] for a in argv if a.startswith("--out=")]
    rest = [a for a in argv if a.startswith("--") and not a.startswith("--out=")]
    if len(prompts) != 1 or any(not a.startswith("--config") for a in rest):
        raise SystemExit(USAGE)
    cfg = config_lib.cli(rest, "configs/eval_knowgen.py")
    out = Path(outs[0]) if outs else Path("runs/generate") / slug(prompts[0])
    try:
        written = generate(prompts[0], cfg, out)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(written, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
