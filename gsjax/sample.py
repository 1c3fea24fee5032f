"""Sample agent turns from a Qwen3 policy: `python -m gsjax.sample --config=configs/sample.py`.

Each of `num_samples` slots renders the task with the chat template and generates one assistant turn
(stopping at `</tool_call>`, `</answer>` or the end of the turn); then a tool observation is
appended to slot 0's conversation, which continues without re-encoding what it holds, while the
other slots keep decoding their own second turn.
"""

from __future__ import annotations

import datetime
import json
import logging
import time

import jax
import ml_collections
import sys
from flax import nnx

from gsjax import config as config_lib
from gsjax.models import hf_io
from gsjax.models.qwen3 import Qwen3, Qwen3Config
from gsjax.parallel import initialize_distributed, make_mesh, shard_module
from gsjax.sampling import Sampler, SamplingParams
from gsjax.tokenizer import Tokenizer

log = logging.getLogger("gsjax.sample")

STOP_STRINGS = ("</tool_call>", "</answer>")
SYSTEM = "You are a research agent. Think in <think></think>, then call one tool in <tool_call></tool_call> or answer in <answer></answer>."

# A few lines in the agent's own format, so the offline BPE has its tags and words.
_CORPUS = [
    "<think>I need the winner of the cup first.</think>\n<tool_call>{\"name\": \"search\", \"arguments\": {\"queries\": [\"2031 Glimmer Cup winner\"], \"top_k\": 5}}</tool_call>",
    "<think>Now an image of the emblem.</think>\n<tool_call>{\"name\": \"image_search\", \"arguments\": {\"query\": \"Tessel Rovers emblem\", \"top_k\": 5}}</tool_call>",
    "<answer>{\"gen_prompt\": \"A banner showing the emblem in the first reference image\", \"reference_images\": [{\"img_id\": \"IMG_001\", \"note\": \"emblem\"}]}</answer>",
    SYSTEM,
    "Draw the emblem of the club that won the 2031 Glimmer Cup, on a banner.",
    "--- search result for [query] --- [title](url) snippet --- end of search result ---",
]


def build_policy(cfg: ml_collections.ConfigDict, mesh) -> tuple[Qwen3, Tokenizer]:
    if cfg.model.path:
        model = hf_io.load_model(
            cfg.model.path, mesh, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, progress=True
        )
        return model, Tokenizer.from_pretrained(cfg.model.path)
    tokenizer = Tokenizer.train_bpe(_CORPUS * 4, vocab_size=cfg.model.tiny.vocab_size)
    model_cfg = Qwen3Config(
        **{**cfg.model.tiny.to_dict(), "vocab_size": tokenizer.vocab_size},
        tie_embeddings=True, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, rope_theta=10_000.0,
    )
    model = Qwen3(model_cfg, rngs=nnx.Rngs(cfg.seed))
    shard_module(model, mesh)
    return model, tokenizer


def run(cfg: ml_collections.ConfigDict) -> dict:
    initialize_distributed()
    mesh = make_mesh(cfg.mesh.to_dict())
    model, tok = build_policy(cfg, mesh)
    log.info("policy: %s, %.2f M parameters, mesh %s", model.cfg.family, model.cfg.num_params() / 1e6, dict(mesh.shape))
    params = SamplingParams(**cfg.sampling.to_dict())
    sampler = Sampler(
        model, num_slots=cfg.num_samples, cache_len=cfg.cache_len, params=params,
        stop_token_ids=[tok.eos_id], stop_strings=STOP_STRINGS, decode=tok.decode, chunk=cfg.chunk,
        seed=cfg.seed, mesh=mesh,
    )
    today = datetime.date.today().isoformat()
    messages = [{"role": "system", "content": f"{SYSTEM}\nToday is {today}"}, {"role": "user", "content": cfg.prompt}]
    prompt = tok.render_chat(messages, add_generation_prompt=True).ids

    t0 = time.perf_counter()
    first = sampler.generate([prompt] * cfg.num_samples, cfg.max_new_tokens)
    t1 = time.perf_counter()
    # Turn two: slot 0 gets a tool observation appended; the others continue their conversation.
    close = tok.encode("<|im_end|>\n")
    obs = close + tok.render_chat([{"role": "user", "content": cfg.observation}], add_generation_prompt=True).ids
    for turn in first:
        sampler.append(turn.slot, obs if turn.slot == 0 else close + tok.render_chat([], True).ids, cfg.max_new_tokens)
    second: dict[int, object] = {}
    while sampler.busy:
        second.update({t.slot: t for t in sampler.step()})
    t2 = time.perf_counter()

    new_tokens = sum(len(t.tokens) for t in first) + sum(len(t.tokens) for t in second.values())
    for turn in first:
        print(f"--- slot {turn.slot}, turn 1 ({turn.finish.value}, {len(turn.tokens)} tokens) ---")
        print(tok.decode(turn.tokens))
    t = second[0]
    print(f"--- slot 0, turn 2 after a tool observation ({t.finish.value}, {len(t.tokens)} tokens) ---")
    print(tok.decode(t.tokens))
    summary = {
        "new_tokens": new_tokens,
        "tokens_per_s_incl_compile": round(new_tokens / (t2 - t0), 1),
        "turn2_tokens_per_s": round(sum(len(t.tokens) for t in second.values()) / (t2 - t1), 1),
        "compilations": dict(sampler.compile_counts),
        "devices": jax.device_count(),
    }
    print(json.dumps(summary))
    return summary


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run(config_lib.cli(argv, "configs/sample.py", __doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
