"""A group rollout against its critical path and against serial execution.

    python -m gsjax.bench.rollout                      # 4 prompts x 4 samples, 200 ms per tool call
    python -m gsjax.bench.rollout --prompts 2 --group 2 --latency 0.05 --repeats 1   # a smoke run

What runs: the real rollout engine, sampler (a tiny Qwen3, the offline default's size, decoding in
slots with its KV cache) and tools (the offline world's index, every call delayed by `--latency`
seconds). The policy replays the scripted expert's turns by teacher forcing (`Sampler`'s `forced`
tokens): every token still costs a model step, but the turns and tool calls are the expert's, so
every trajectory has a known shape (3 to 7 tool calls) and the group's members are alike.

    group     all prompts x samples at once, one slot each (the training rollout)
    critical  the slowest trajectory alone: no rollout of the group can end before it
    serial    every trajectory alone, one after another

The target is group / critical <= 1.3 (decoding and tool calls of other slots overlap the slowest
trajectory's tool waits); serial / group is the speed-up over running trajectories one by one.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import dataclasses
import datetime
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from flax import nnx

from gsjax.agent.protocol import AgentLimits
from gsjax.agent.rollout import RolloutEngine, Task
from gsjax.agent.tools import ToolsConfig, build_toolbox
from gsjax.agent.types import ImageRegistry, ToolCall, ToolResult
from gsjax.bench.common import add_model_flags, interleaved, model_config
from gsjax.models.qwen3 import Qwen3
from gsjax.sampling import Sampler, SamplingParams
from gsjax.tokenizer import Tokenizer
from gsjax.world.build import build_preset
from gsjax.world.expert import solve
from gsjax.world.prompts import read_truth

TODAY = datetime.date(2026, 1, 1)
LIMITS = AgentLimits(prompt="compact", max_tokens_per_turn=192, max_conversation_tokens=2048, max_answer_refs=4)


class DelayedTools:
    """A toolbox whose every call takes `latency` seconds more (a remote service's delay), on its
    own pool of `workers` threads."""

    def __init__(self, inner, latency: float, workers: int = 64):
        self.inner, self.latency = inner, latency
        self._pool = cf.ThreadPoolExecutor(max_workers=workers)

    def run(self, call: ToolCall, registry: ImageRegistry) -> ToolResult:
        time.sleep(self.latency)
        return self.inner.run(call, registry)

    def submit(self, call: ToolCall, registry: ImageRegistry) -> cf.Future[ToolResult]:
        return self._pool.submit(self.run, call, registry)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class ReplaySampler(Sampler):
    """A `Sampler` whose turns are forced to a script's turns (the script found by its prompt)."""

    def __init__(self, model: Qwen3, tok: Tokenizer, scripts: dict[str, list[str]], **kwargs):
        super().__init__(model, **kwargs)
        self.tok, self.scripts = tok, scripts
        self._script: dict[int, list[list[int]]] = {}

    def start(self, slot, ids, max_new_tokens, seed=None, forced=(), images=None):
        prompt = self.tok.decode(ids)
        key = next(k for k in self.scripts if k in prompt)
        self._script[slot] = [self.tok.encode(turn) for turn in self.scripts[key]]
        super().start(slot, ids, max_new_tokens, seed, forced=self._script[slot].pop(0))

    def append(self, slot, ids, max_new_tokens, forced=(), images=None):
        turns = self._script[slot]
        super().append(slot, ids, max_new_tokens, forced=turns.pop(0) if turns else ())


@dataclasses.dataclass(frozen=True)
class RolloutBench:
    group_s: float
    critical_s: float
    serial_s: float
    tool_calls: int

    @property
    def over_critical(self) -> float:
        return self.group_s / self.critical_s

    @property
    def speedup_over_serial(self) -> float:
        return self.serial_s / self.group_s


def add_replay_flags(p: argparse.ArgumentParser, prompts: int, group: int, latency: float) -> None:
    """The flags `replay` reads (and the model's, `add_model_flags`), with a bench's own defaults."""
    p.add_argument("--prompts", type=int, default=prompts)
    p.add_argument("--group", type=int, default=group, help="samples per prompt")
    p.add_argument("--latency", type=float, default=latency, help="seconds added to every tool call")
    p.add_argument("--chunk", type=int, default=4, help="decode steps per sampler call")
    p.add_argument("--repeats", type=int, default=3)
    add_model_flags(p)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gsjax.bench.rollout", description=__doc__.split("\n\n")[0])
    add_replay_flags(p, prompts=4, group=4, latency=0.2)
    return p.parse_args(argv)


@dataclasses.dataclass
class Replay:
    """The expert's longest episodes replayed through the real engine, sampler and (delayed) tools."""

    world: Path
    engine: RolloutEngine
    tasks: list[Task]
    chosen: list  # the expert runs replayed (slowest first)
    tools: DelayedTools

    def check(self, trajs) -> int:
        """The replayed trajectories' tool calls; an error unless each ended with the expert's answer
        (otherwise the timing means nothing)."""
        expected = {r.key.id: r.episode.answer for r in self.chosen}
        wrong = [t.task.prompt_id for t in trajs if t.answer != expected[t.task.prompt_id]]
        if wrong:
            raise RuntimeError(f"replayed trajectories did not end with the expert's answer: {wrong}: "
                               f"{[(t.termination, t.answer) for t in trajs]} vs {expected}")
        return sum(t.tool_calls for t in trajs)


@contextlib.contextmanager
def replay(args: argparse.Namespace, tmp: Path, spread: bool = False):
    """A `Replay` of `args.prompts` x `args.group` episodes (the model flags of `add_model_flags`),
    tools `args.latency` s slower; built in `tmp`. The expert's longest episodes, or with `spread`
    episodes of every length from the longest to the shortest (they end at different times)."""
    world = build_preset(tmp / "world", "tiny").root
    keys = [k for k in read_truth(world / "truth.json").values() if k.split == "train"]
    tools_cfg = ToolsConfig(world_dir=str(world), image_dir=str(tmp / "images"), extractive_sentences=2, workers=64)
    with build_toolbox(tools_cfg) as toolbox:
        experts = [solve(k, toolbox.run, TODAY, LIMITS, top_k=2, image_top_k=1) for k in keys]
        # The prompts whose trajectories are the longest: the group's shape is the worst case.
        experts.sort(key=lambda r: -len(r.episode.turns))
        if spread:
            last = len(experts) - 1
            chosen = [experts[round(i * last / max(args.prompts - 1, 1))] for i in range(args.prompts)]
        else:
            chosen = experts[: args.prompts]
        scripts = {r.key.prompt: [t.text for t in r.episode.turns] for r in chosen}
        texts = [m["content"] for r in experts for m in r.episode.messages if isinstance(m["content"], str)]
        # At least 1024 ids: a smaller BPE makes the expert's turns overrun the per-turn token limit.
        tok = Tokenizer.train_bpe(texts, max(args.vocab, 1024))
        model = Qwen3(dataclasses.replace(model_config(args), vocab_size=tok.vocab_size), rngs=nnx.Rngs(args.seed))
        tools = DelayedTools(toolbox, args.latency)
        tasks = [Task(r.key.id, r.key.prompt, g) for r in chosen for g in range(args.group)]
        sampler = ReplaySampler(model, tok, scripts, num_slots=len(tasks), cache_len=2048,
                                params=SamplingParams(temperature=1.0), chunk=args.chunk,
                                stop_token_ids=[tok.eos_id, tok.token_to_id("</tool_call>")],
                                stop_strings=["</answer>"], decode=tok.decode)
        engine = RolloutEngine(sampler, tok, tools, limits=LIMITS, today=TODAY)
        try:
            yield Replay(world, engine, tasks, chosen, tools)
        finally:
            tools.close()


def main(argv: Sequence[str] | None = None) -> RolloutBench:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, replay(args, Path(tmp)) as r:
        engine, tasks, chosen = r.engine, r.tasks, r.chosen
        slowest = Task(chosen[0].key.id, chosen[0].key.prompt)
        calls: list[int] = []

        def group() -> None:
            calls.append(r.check(engine.run(tasks, seed=0)))

        def critical() -> None:
            engine.run([slowest], seed=0)

        def serial() -> None:
            for task in tasks:
                engine.run([task], seed=0)

        timings = interleaved({"group": group, "critical": critical, "serial": serial},
                              repeats=args.repeats, warmup=1)
    per_round = [g / c for g, c in zip(timings["group"].seconds, timings["critical"].seconds)]
    speedups = [s / g for s, g in zip(timings["serial"].seconds, timings["group"].seconds)]
    result = RolloutBench(timings["group"].median, timings["critical"].median, timings["serial"].median,
                          calls[-1])
    print(f"{len(tasks)} trajectories ({args.prompts} prompts x {args.group}), {calls[-1]} tool calls, "
          f"{args.latency * 1000:.0f} ms per tool call, {args.repeats} interleaved rounds")
    print(f"group / critical path = {sorted(per_round)[len(per_round) // 2]:.2f} "
          f"[{min(per_round):.2f}-{max(per_round):.2f}]  (target <= 1.3)")
    print(f"serial / group        = {sorted(speedups)[len(speedups) // 2]:.2f} "
          f"[{min(speedups):.2f}-{max(speedups):.2f}]")
    return result


if __name__ == "__main__":
    main()
