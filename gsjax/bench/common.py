"""Timing contenders against each other on a shared, noisy machine.

Every contender is warmed up, then timed in interleaved rounds (A, B, A, B, ...) so that load from
other processes hits all of them alike. Results are ratios: each round gives one paired ratio
(baseline seconds / contender seconds), and the reported ratio is the median over rounds, with the
range across rounds as its spread. Absolute times are printed only as context.

Also the one model setup both benchmarks share: flags for a tiny Qwen3, and the gsjax model with
its transformers twin holding the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

import torch
import transformers
from flax import nnx

from gsjax.models.hf_io import save_model
from gsjax.models.qwen3 import Qwen3, Qwen3Config, tiny_config


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of each timed call of one contender, in round order."""

    name: str
    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclasses.dataclass(frozen=True)
class Ratio:
    """How many times faster `contender` is than `baseline`: the median of the paired per-round
    ratios baseline_seconds / contender_seconds, and their smallest and largest values."""

    contender: str
    baseline: str
    median: float
    low: float
    high: float


def interleaved(
    contenders: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 1,
    pause: float = 0.05,
) -> dict[str, Timing]:
    """Call each contender `warmup` times, then `repeats` rounds of one timed call each.

    A call must return only when its work is done (block on device results inside it). `pause`
    seconds of sleep before every call let the previous contender's worker threads go idle, so
    neither runtime's spinning threads eat into the other's time.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn in contenders.values():
            time.sleep(pause)
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            time.sleep(pause)
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
    return {name: Timing(name, tuple(s)) for name, s in seconds.items()}


def paired_ratio(contender: Timing, baseline: Timing) -> Ratio:
    if len(contender.seconds) != len(baseline.seconds):
        raise ValueError(
            f"{contender.name} has {len(contender.seconds)} rounds and {baseline.name} "
            f"{len(baseline.seconds)}; paired ratios need the same rounds"
        )
    per_round = [b / c for c, b in zip(contender.seconds, baseline.seconds)]
    return Ratio(contender.name, baseline.name, statistics.median(per_round), min(per_round), max(per_round))


def print_table(timings: Sequence[Timing], *, work: float, unit: str, baseline: str) -> dict[str, Ratio]:
    """Print one row per contender (rate at the median time, median and range of seconds, ratio to
    `baseline`) and return the ratios by contender name. `work` is the units done per call
    (tokens, steps), so a row's rate is work / median seconds, in `unit`/s."""
    by_name = {t.name: t for t in timings}
    if baseline not in by_name:
        raise KeyError(f"baseline {baseline!r} is not among the contenders {sorted(by_name)}")
    ratios = {t.name: paired_ratio(t, by_name[baseline]) for t in timings}
    width = max(len(t.name) for t in timings)
    rate = f"{unit}/s"
    header = f"{'':<{width}}  {rate:>12}  {'median s':>9}  {'min s':>9}  {'max s':>9}  {'x ' + baseline:>16}"
    print(header)
    print("-" * len(header))
    for t in timings:
        r = ratios[t.name]
        spread = f"{r.median:.2f} [{r.low:.2f}-{r.high:.2f}]"
        print(
            f"{t.name:<{width}}  {work / t.median:>12.1f}  {t.median:>9.4f}  {min(t.seconds):>9.4f}"
            f"  {max(t.seconds):>9.4f}  {spread:>16}"
        )
    rounds = len(timings[0].seconds)
    print(f"({rounds} interleaved rounds; ratio = median of per-round {baseline} s / row s, [min-max])")
    return ratios


# ----------------------------------------------------------------------------- the two models


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Flags for the tiny Qwen3 both benchmarks run (defaults: the offline world's size)."""
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--mlp", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)


def model_config(args: argparse.Namespace) -> Qwen3Config:
    return tiny_config(
        num_layers=args.layers, hidden_size=args.hidden, num_heads=args.heads, num_kv_heads=args.kv_heads,
        head_dim=args.head_dim, intermediate_size=args.mlp, vocab_size=args.vocab,
    )


def twin_models(cfg: Qwen3Config, seed: int) -> tuple[Qwen3, torch.nn.Module]:
    """A gsjax Qwen3 and transformers' Qwen3ForCausalLM (float32) holding the same weights: the
    gsjax model is written with `save_model` and read back with `from_pretrained`."""
    model = Qwen3(cfg, rngs=nnx.Rngs(seed))
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as folder:
        save_model(model, folder)
        reference = transformers.Qwen3ForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, reference
