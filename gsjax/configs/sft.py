r"""SFT only, then the held-out evaluation of the SFT policy (and its no-search baseline).

  python -m gsjax.train --config=configs/sft.py            # offline world, tiny policy, CPU
  python -m gsjax.train --config=configs/sft.py:qwen3_8b --config.model.path=/ckpt/Qwen3-8B \
      --config.data.sft_data=/data/sft_data.json         # the reference's SFT: lr 1e-5, cosine, 2 epochs
  python -m gsjax.train --config=configs/sft.py:qwen3vl_8b --config.model.path=/ckpt/Qwen3-VL-8B-Instruct \
      --config.data.sft_data=/data/sft_data.json         # the same, Qwen3-VL-8B with the examples' images
"""

import importlib.util
from pathlib import Path

import ml_collections


def _grpo():
    spec = importlib.util.spec_from_file_location("grpo_config", Path(__file__).with_name("grpo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PRESETS = _grpo().PRESETS  # configs/grpo.py's, with GRPO off


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    c = _grpo().get_config(preset)
    c.rl.steps = 0
    c.workdir = c.workdir.replace("grpo", "sft")
    if preset in ("qwen3_8b", "qwen3vl_8b"):
        # LLaMA-Factory's recipe: cutoff 32,768 tokens, one sequence per GPU (8 per step), lr 1e-5 cosine.
        c.sft.update(steps=2000, lr=1e-5, warmup_frac=0.02, weight_decay=1e-6, row_len=32768, rows_per_batch=8,
                     micro_batch_tokens=32768, vocab_chunk=8192)
    return c
