r"""WISE evaluation: an agent and the image generator over a WISE file, judged from each prompt and
its explanation (WISE has no ground-truth images); WiScore under both protocols (the paper's
0-2 scores and WISE_Verified's binary one).

  python -m gsjax.eval --config=configs/eval_wise.py --config.data.benchmark=/data/WISE/data_verified/merge.json
      An offline smoke test: the no-search baseline, the world renderer as generator and the
      `local` WISE judge (a documented smoke-test scorer, not a measure of image quality; see
      gsjax/eval/wise_judge.py) over WISE_Verified's prompts. data.benchmark defaults to the copy
      in the shared benchmark folder beside this checkout (../shared/benchmarks/wise/) when there
      is one; elsewhere name the file.
  python -m gsjax.eval --config=configs/eval_wise.py:openai --config.data.benchmark=/data/WISE/data_verified/merge.json \
      --config.agent.model=gpt-4.1 --config.reward.generator_urls='("http://gen-host:8000",)'
      A real run: an OpenAI-compatible agent with real search, the POST /generate server and an
      OpenAI-compatible judge (reward.judge_model; WISE_Verified uses Qwen3.5-35B-A3B on vLLM).
"""

from pathlib import Path

import ml_collections

from gsjax import config as config_lib

# WISE_Verified's prompts in the shared benchmark folder beside the checkout, where it exists.
SHARED_WISE = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "wise" / "verified_merge.json"

PRESETS = ("default", "test", "openai")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    base = {"test": "test", "openai": "openai"}.get(preset or "", None)
    if preset not in (None, "", *PRESETS):
        raise ValueError(f"unknown preset {preset!r} for configs/eval_wise.py; expected one of {', '.join(PRESETS)}")
    knowgen = str(Path(__file__).with_name("eval_knowgen.py"))
    c = config_lib.load(knowgen + (f":{base}" if base else ""))
    c.benchmark = "wise"
    c.workdir = c.workdir.replace("eval_knowgen", "eval_wise")
    c.data.benchmark = str(SHARED_WISE) if SHARED_WISE.is_file() else ""  # WISE's data_verified/merge.json
    c.agent.backend = "none" if preset != "openai" else "openai"
    c.reward.judge = "local" if preset != "openai" else "openai"
    # The openai judge's system prompt from a file ("" = gsjax's own wording). The file's rubric has
    # to ask for the reply gsjax/eval/wise_judge.py reads: one JSON object with consistency, realism
    # and aesthetic_quality (0-2) and verified (0/1).
    c.reward.wise_rubric = ""
    return c
