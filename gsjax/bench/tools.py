"""Tool calls on the ToolBox's thread pool against the same calls run one after another.

    python -m gsjax.bench.tools                 # 64 calls, 200 ms per request, ~1 min on 2 cores
    python -m gsjax.bench.tools --trajectories 8 --latency 0.02 --repeats 1   # a smoke run

A tiny offline world is built and served over loopback (`gsjax.world.serve`) with a fixed latency
injected into every request; the tools use the real HTTP clients (Serper-compatible search,
Jina-compatible reader, image downloads). One call per trajectory, each with its own image
registry: search (one query), image_search (top_k 3: a search and three downloads) and browse
(one page), in turn. Every timed run gets a fresh image folder and no HTTP cache, so nothing is
served from a cache. `ideal` is the fastest the pool could be: the longest single call (from the
serial run), or the serial time over the workers if that is larger.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gsjax.agent.tools import HttpConfig, ToolBox, ToolsConfig, build_toolbox
from gsjax.agent.types import ImageRegistry, ToolCall, ToolResult
from gsjax.bench.common import Ratio, interleaved, print_table
from gsjax.world.build import build_preset
from gsjax.world.corpus import Corpus
from gsjax.world.serve import Fault, WorldServer


@dataclasses.dataclass(frozen=True)
class ToolsBench:
    ratio: Ratio  # parallel calls/s over serial calls/s (= serial s / parallel s)
    serial_s: float  # median wall time of the serial runs
    parallel_s: float  # median wall time of the pool runs
    ideal_s: float  # the pool's lower bound
    errors: int  # tool calls that failed (0 expected)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gsjax.bench.tools", description=__doc__.split("\n\n")[0])
    p.add_argument("--trajectories", type=int, default=64, help="tool calls in the batch (one per trajectory)")
    p.add_argument("--latency", type=float, default=0.2, help="seconds added to every request by the server")
    p.add_argument("--workers", type=int, default=64, help="ToolBox threads")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--world", type=Path, default=None, help="a built world folder (default: a tiny one, built now)")
    return p.parse_args(argv)


def make_calls(corpus: Corpus, n: int) -> list[ToolCall]:
    pages = [p for p in corpus.pages if p.path.startswith("/page/")]
    images = corpus.images
    calls = []
    for i in range(n):
        if i % 3 == 0:
            calls.append(ToolCall("search", {"queries": [pages[i % len(pages)].title], "top_k": 5}))
        elif i % 3 == 1:
            calls.append(ToolCall("image_search", {"query": images[i % len(images)].title, "top_k": 3}))
        else:
            calls.append(ToolCall("browse", {"url": pages[i % len(pages)].path, "query": "what does it look like"}))
    return calls


def main(argv: Sequence[str] | None = None) -> ToolsBench:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        world = args.world or build_preset(Path(tmp) / "world", "tiny").root
        corpus = Corpus.load(world)
        calls = make_calls(corpus, args.trajectories)
        with WorldServer(corpus, [Fault("/", "latency", seconds=args.latency)]) as server:
            calls = [_absolute(c, server.url) for c in calls]
            runs = iter(range(10**6))
            latencies: list[list[float]] = []
            errors: list[int] = []

            def toolbox() -> ToolBox:
                return build_toolbox(ToolsConfig(
                    backend="http", search_base=server.url, search_key_env="", search_cache=False,
                    reader_base=f"{server.url}/reader", reader_key_env="", allow=(f"127.0.0.1:{server.port}",),
                    image_dir=str(Path(tmp) / f"images-{next(runs)}"), workers=args.workers,
                    http=HttpConfig(max_in_flight=args.workers, read_timeout_s=30.0)))

            def serial() -> None:
                with toolbox() as tools:
                    results = [tools.run(c, ImageRegistry()) for c in calls]
                latencies.append([r.latency_s for r in results])
                errors.append(_errors(results))

            def parallel() -> None:
                with toolbox() as tools:
                    futures = [tools.submit(c, ImageRegistry()) for c in calls]
                    results = [f.result() for f in futures]
                errors.append(_errors(results))

            timings = interleaved({"serial": serial, "parallel": parallel}, repeats=args.repeats,
                                  warmup=args.warmup)
    print(f"{len(calls)} tool calls ({_mix(calls)}), {args.latency * 1000:.0f} ms injected per request, "
          f"{args.workers} workers")
    ratios = print_table(list(timings.values()), work=len(calls), unit="calls", baseline="serial")
    serial_s, parallel_s = timings["serial"].median, timings["parallel"].median
    ideal_s = statistics.median(max(max(lat), sum(lat) / args.workers) for lat in latencies)
    print(f"serial / parallel = {serial_s / parallel_s:.1f}x; parallel / ideal = {parallel_s / ideal_s:.2f} "
          f"(ideal {ideal_s:.3f} s: the longest call, or serial time / workers); failed calls: {max(errors)}")
    return ToolsBench(ratios["parallel"], serial_s, parallel_s, ideal_s, max(errors))


def _absolute(call: ToolCall, base: str) -> ToolCall:
    if call.name == "browse":
        return ToolCall(call.name, {**call.arguments, "url": base + call.arguments["url"]})
    return call


def _errors(results: list[ToolResult]) -> int:
    return sum(r.error is not None for r in results)


def _mix(calls: list[ToolCall]) -> str:
    names = [c.name for c in calls]
    return ", ".join(f"{names.count(n)} {n}" for n in dict.fromkeys(names))


if __name__ == "__main__":
    main()
