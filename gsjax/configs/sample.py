"""Sampling from a Qwen3 policy with the slot KV-cache sampler: `python -m gsjax.sample`.

  python -m gsjax.sample --config=configs/sample.py
      The embedded default: a tiny random Qwen3 and a byte-level BPE built on the spot, on the CPU,
      in seconds. It shows the machinery (chat template, slots, a tool observation appended to a
      running conversation, stop strings); its text is noise until the training issue lands.
  python -m gsjax.sample --config=configs/sample.py:qwen3_8b --config.model.path=/ckpt/Qwen3-8B
      A real Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json), bf16,
      sharded over every device with tensor parallelism.
"""

import ml_collections

PRESETS = ("tiny", "qwen3_8b")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # a HF checkpoint folder; empty = a tiny random model
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    # The tiny model (used when model.path is empty).
    c.model.tiny = ml_collections.ConfigDict(dict(
        vocab_size=768, hidden_size=128, intermediate_size=512, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=32,
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tp=1))
    c.sampling = ml_collections.ConfigDict(dict(temperature=0.7, top_p=0.95, top_k=0))
    c.num_samples = 4
    c.max_new_tokens = 64
    c.cache_len = 512
    c.chunk = 16
    c.prompt = "Draw the emblem of the club that won the 2031 Glimmer Cup, on a banner."
    c.observation = "<tool_response>\n--- search result for [2031 Glimmer Cup winner] ---\n[Glimmer Cup](local://cup) The 2031 cup went to the Tessel Rovers.\n--- end of search result ---\n</tool_response>"

    if preset in (None, "", "tiny"):
        pass
    elif preset == "qwen3_8b":
        c.model.dtype = "bfloat16"
        c.model.param_dtype = "bfloat16"
        c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tp=-1))
        c.max_new_tokens = 512
        c.cache_len = 8192
    else:
        raise ValueError(f"unknown preset {preset!r} for configs/sample.py; expected one of {', '.join(PRESETS)}")
    return c
