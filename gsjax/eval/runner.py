"""An evaluation run: items -> agent -> generator -> judge -> one JSON line per item, then the
benchmark's summary.

A run lives in one folder:

    results.jsonl   one record per finished item, appended (and fsynced) the moment it finishes
    images/<id>.png the generated images
    run.json        what the run evaluates (benchmark file, agent, generator, judge): a rerun with a
                    different one is refused instead of mixing results
    summary.json    the benchmark's summary, computed from results.jsonl alone

Rerunning resumes: items already in results.jsonl are skipped (a torn last line from a crash is
dropped), so a killed run loses only the items in flight and no item is judged twice once it was
recorded. The summary depends only on the records, so a resumed run and an uninterrupted one
print the same numbers. Items run `concurrency` at a time on a thread pool (agent, generation and
judging of one item in one task); the batched policy agent runs `batch_size` items through the
sampler's slots, then judges them on the pool. A bad benchmark row, a missing ground truth, an
unreadable image, a failed generation or judge call become a failed record with its reason;
the run goes on.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from gsjax.agent.types import Answer
from gsjax.eval.agents import Agent, AgentRun
from gsjax.fileio import ResultsLog, atomic_write, pin_run
from gsjax.rewards.generator import ImageGenerator, answer_request
from gsjax.rewards.types import RewardSettings

SCORED, FAILED = "scored", "failed"


@dataclasses.dataclass(frozen=True)
class EvalItem:
    id: str
    prompt: str
    category: str
    gt_image: str = ""  # "" for benchmarks without ground truth (WISE)
    explanation: str = ""  # WISE
    invalid: str = ""  # a bad benchmark row: why (the item is recorded as failed, never run)


class Benchmark(Protocol):
    name: str
    needs_gt: bool

    def items(self) -> list[EvalItem]: ...

    def judge(self, item: EvalItem, generated: str, gen_prompt: str) -> dict[str, Any] | str: ...

    def summarize(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]: ...


def answer_dict(answer: Answer | None) -> dict[str, Any] | None:
    if answer is None:
        return None
    return {"gen_prompt": answer.gen_prompt,
            "references": [{"img_id": r.img_id, "note": r.note, "path": r.path} for r in answer.references]}


def _record(item: EvalItem, run: AgentRun | None, agent: str) -> dict[str, Any]:
    return {
        "id": item.id, "prompt": item.prompt, "category": item.category, "gt_image": item.gt_image,
        "explanation": item.explanation, "agent": agent,
        "termination": run.termination if run else None,
        "tool_calls": run.tool_calls if run else 0,
        "answer": answer_dict(run.answer) if run else None,
        "messages": run.messages if run else [],
        "shown": [dataclasses.asdict(s) for s in run.shown] if run else [],
        "sent": None, "generated": None, "scores": None, "status": FAILED, "error": None, "seconds": 0.0,
    }


class Runner:
    def __init__(self, bench: Benchmark, agent: Agent, generator: ImageGenerator, run_dir: Path | str, *,
                 settings: RewardSettings = RewardSettings(), concurrency: int = 8, progress: bool = True,
                 fingerprint: dict[str, Any] | None = None):
        self.bench, self.agent, self.generator = bench, agent, generator
        self.dir = Path(run_dir)
        self.settings = settings
        self.concurrency = max(1, concurrency)
        self.progress = progress
        self.log = ResultsLog(self.dir / "results.jsonl")
        pin_run(self.dir, fingerprint or {}, elsewhere="another run_name or workdir")

    # ------------------------------------------------------------------ one item

    def finish(self, item: EvalItem, run: AgentRun | None) -> dict[str, Any]:
        """Generate and judge one item whose agent has run; the record (never raises)."""
        t0 = time.perf_counter()
        rec = _record(item, run, self.agent.name)
        try:
            self._finish(item, run, rec)
        except Exception as e:  # a bug or a backend surprise: a failed item, the run goes on
            rec["status"], rec["error"] = FAILED, f"{type(e).__name__}: {e}"
        rec["seconds"] = round(time.perf_counter() - t0 + rec["seconds"], 3)
        return rec

    def _finish(self, item: EvalItem, run: AgentRun | None, rec: dict[str, Any]) -> None:
        if item.invalid:
            rec["error"] = f"bad benchmark row: {item.invalid}"
            return
        if self.bench.needs_gt and not Path(item.gt_image).is_file():
            rec["error"] = f"ground truth image missing: {item.gt_image}"
            return
        if run is None or run.error:
            rec["error"] = f"agent: {run.error if run else 'did not run'}"
            return
        request = answer_request(run.answer, item.prompt, self.settings)
        rec["sent"] = {"prompt": request.prompt, "refs": list(request.ref_paths)}
        out = self.dir / "images" / f"{_safe(item.id)}.png"
        gen = self.generator.generate(request, out)
        if gen.path is None:
            rec["error"] = f"generation: {gen.error}"
            return
        rec["generated"] = gen.path
        verdict = self.bench.judge(item, gen.path, request.prompt)
        if isinstance(verdict, str):
            rec["error"] = f"judge: {verdict}"
            return
        rec["scores"], rec["status"] = verdict, SCORED

    def _agent_and_finish(self, item: EvalItem) -> dict[str, Any]:
        t0 = time.perf_counter()
        run = None
        if not item.invalid:
            try:
                run = self.agent.run(item.id, item.prompt)
            except Exception as e:  # an agent bug must not end the evaluation
                run = AgentRun("error", None, [], [], error=f"{type(e).__name__}: {e}")
        rec = self.finish(item, run)
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        return rec

    # ------------------------------------------------------------------ the run

    def run(self, items: Sequence[EvalItem]) -> dict[str, Any]:
        done = self.log.recorded_ids([it.id for it in items], "benchmark item")
        todo = [it for it in items if it.id not in done]
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"eval {self.agent.name}",
                   disable=not self.progress)
        pool = cf.ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="eval")
        futures: list[cf.Future] = []
        appended: set[cf.Future] = set()

        def record(fut: cf.Future) -> None:
            self.log.append(fut.result())
            appended.add(fut)
            bar.update(1)

        try:
            if self.agent.batched:
                runnable = [it for it in todo if not it.invalid]
                futures += [pool.submit(self.finish, it, None) for it in todo if it.invalid]
                size = getattr(self.agent, "batch_size", self.concurrency)
                for start in range(0, len(runnable), size):
                    chunk = runnable[start:start + size]
                    runs = self.agent.run_batch([(it.id, it.prompt) for it in chunk])
                    futures += [pool.submit(self.finish, it, r) for it, r in zip(chunk, runs)]
                    for fut in [f for f in futures if f.done() and f not in appended]:
                        record(fut)
            else:
                futures = [pool.submit(self._agent_and_finish, it) for it in todo]
            for fut in cf.as_completed([f for f in futures if f not in appended]):
                record(fut)
        finally:  # Ctrl-C or an error: keep what finished, drop what had not started
            pool.shutdown(wait=True, cancel_futures=True)
            for fut in futures:
                if fut not in appended and fut.done() and not fut.cancelled() and fut.exception() is None:
                    record(fut)
            bar.close()
        return self.summary(items)

    def records(self, items: Sequence[EvalItem]) -> list[dict[str, Any]]:
        """The recorded results of `items`, in the items' order (first record of an id wins)."""
        by_id = self.log.by_id()
        return [by_id[it.id][1] for it in items if it.id in by_id]

    def summary(self, items: Sequence[EvalItem]) -> dict[str, Any]:
        records = self.records(items)
        summary = self.bench.summarize(records)
        summary.update(run_summary(records, len(items)))
        atomic_write(self.dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary


def run_summary(records: Sequence[dict[str, Any]], n_items: int) -> dict[str, Any]:
    """What every benchmark reports about the run itself."""
    ran = [r for r in records if r.get("termination") not in (None, "no_search")]
    reasons: dict[str, int] = {}
    for r in records:
        if r["status"] == FAILED:
            kind = (r.get("error") or "unknown").split(":")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
    return {
        "items": n_items, "recorded": len(records),
        "failed": sum(r["status"] == FAILED for r in records), "failure_kinds": reasons,
        "answered": (sum(r.get("termination") == "answer" for r in ran) / len(ran)) if ran else None,
        "tool_calls": (sum(r.get("tool_calls", 0) for r in ran) / len(ran)) if ran else None,
    }


def _safe(item_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(item_id))
