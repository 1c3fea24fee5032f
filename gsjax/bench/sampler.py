"""Generation throughput: gsjax's jitted KV-cache Sampler against transformers' PyTorch `generate`.

    python -m gsjax.bench.sampler            # ~1 min on 2 CPU cores
    python -m gsjax.bench.sampler --batch 2 --new-tokens 8 --repeats 1   # a smoke run

Both sides get the same weights (gsjax model -> save_model -> from_pretrained, float32), the same
batch of equal-length prompts, greedy decoding and exactly `--new-tokens` new tokens (no stop token),
so the work is identical; the generated ids are compared as a sanity check. Timed calls include the
prompt prefill on both sides; compilation is not timed (the sampler is warmed up first).

Two Sampler knobs are set for this workload, not left at their defaults: `chunk` is the whole
generation (no row stops early, so one jitted call decodes it all), and the prefill buckets stop at
the prompt's bucket (the cache is padded by the largest bucket, and each decode step attends over
the whole cache). `--chunk 16` and `--sampler-defaults` measure the defaults; docs/benchmarks.md
lists the ratios of all three.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch

from gsjax.bench.common import Ratio, add_model_flags, interleaved, model_config, print_table, twin_models
from gsjax.sampling.logits import SamplingParams
from gsjax.sampling.sampler import Sampler


@dataclasses.dataclass(frozen=True)
class SamplerBench:
    ratio: Ratio  # gsjax tokens/s over torch tokens/s
    outputs_match: bool  # the greedy ids are identical
    compile_seconds: float  # the sampler's first call (tracing + XLA compilation + one run)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument(
        "--chunk", type=int, default=None,
        help="decode steps per jitted sampler call (default: --new-tokens, one call, as no row stops early)",
    )
    parser.add_argument(
        "--sampler-defaults", action="store_true",
        help="use the Sampler's own chunk (16) and prefill buckets (up to 512) instead",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    add_model_flags(parser)
    return parser.parse_args(argv)


def prefill_buckets_for(prompt_len: int) -> tuple[int, ...]:
    """The Sampler's default buckets, cut at the first one that holds the prompt. The KV cache is
    padded by the largest bucket and every decode step attends over the whole cache, so the
    default's 512 would make each step attend over 512 positions that are never used here."""
    default = (16, 32, 64, 128, 256, 512)
    return tuple(b for b in default if b < prompt_len) + (next((b for b in default if b >= prompt_len), prompt_len),)


def main(argv: Sequence[str] | None = None) -> SamplerBench:
    args = parse_args(argv)
    cfg = model_config(args)
    model, reference = twin_models(cfg, args.seed)
    reference.eval()
    prompts = np.random.default_rng(args.seed).integers(0, cfg.vocab_size, (args.batch, args.prompt_len))
    prompt_lists = prompts.tolist()
    n_new = args.new_tokens

    if args.sampler_defaults:
        knobs = {}
    else:
        knobs = dict(prefill_buckets=prefill_buckets_for(args.prompt_len), chunk=args.chunk or n_new)
    sampler = Sampler(
        model, num_slots=args.batch, cache_len=args.prompt_len + n_new, params=SamplingParams(temperature=0.0), **knobs
    )
    input_ids = torch.from_numpy(prompts)
    attention_mask = torch.ones_like(input_ids)

    def run_gsjax() -> list[list[int]]:
        return [turn.tokens for turn in sampler.generate(prompt_lists, n_new)]

    def run_torch() -> list[list[int]]:
        with torch.inference_mode():
            out = reference.generate(
                input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=n_new,
                eos_token_id=None, pad_token_id=0,
            )
        return out[:, args.prompt_len :].tolist()

    t0 = time.perf_counter()
    ours = run_gsjax()
    compile_seconds = time.perf_counter() - t0
    theirs = run_torch()
    lengths = {len(t) for t in ours + theirs}
    if lengths != {n_new}:
        raise RuntimeError(f"expected {n_new} new tokens in every row from both; got lengths {sorted(lengths)}")
    match = ours == theirs
    if not match:
        rows = [i for i in range(args.batch) if ours[i] != theirs[i]]
        first = [next(j for j, (a, b) in enumerate(zip(ours[i], theirs[i])) if a != b) for i in rows]
        print(f"MISMATCH in rows {rows}, first differing positions {first}")

    timings = interleaved({"gsjax": run_gsjax, "torch": run_torch}, repeats=args.repeats, warmup=args.warmup)
    print(
        f"generate: batch {args.batch}, prompt {args.prompt_len}, {n_new} new tokens, greedy; "
        f"{cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size} "
        f"({cfg.num_params() / 1e6:.2f} M params), torch threads {torch.get_num_threads()}"
    )
    print(f"generated ids identical: {match}")
    print(
        f"gsjax sampler: chunk {sampler.chunk}, prefill buckets {sampler.prefill_buckets}; first call "
        f"(compile + run) {compile_seconds:.2f} s; compilations {dict(sampler.compile_counts)}"
    )
    ratios = print_table(list(timings.values()), work=args.batch * n_new, unit="tokens", baseline="torch")
    print(f"gsjax / torch tokens/s: {ratios['gsjax'].median:.2f}x")
    return SamplerBench(ratios["gsjax"], match, compile_seconds)


if __name__ == "__main__":
    main()
