"""An evaluation run: items -> agent -> generator -> judge -> one JSON line per item, then the
benchmark's summary.

Stages (`eval.stage`): "all" runs the three; "generate" stops after the image (a record with status
"generated": judging is pending); "judge" runs no agent and no generator: it judges the folder's
"generated" records, or, given a results file made elsewhere (`gsjax.eval.results_file`), the
images that file names.

A run lives in one folder:

    results.jsonl   one record per finished item, appended (and fsynced) the moment it finishes
    images/<id>.png the generated images
    run.json        what the run evaluates (benchmark file, agent, generator, judge): a rerun with a
                    different one is refused instead of mixing results
    summary.json    the benchmark's summary, computed from results.jsonl alone

Rerunning resumes: items already in results.jsonl are skipped (a torn last line from a crash is
dropped), so a killed run loses only the items in flight and no item is judged again once its
scores were recorded. Two kinds of record are taken up again, without running the agent or the
generator: a "generated" one (unless the stage is "generate") and a failed judge call (error
"judge: ..."), both judged from the recorded image; from a results file, a row that could not be
used (error "results: ...") is read again. The redone item gets a new record, appended (the log
stays append-only); an id's last record is the one that counts. The summary depends only on the
records, so a resumed run and an uninterrupted one print the same numbers.

Items run `concurrency` at a time on a thread pool (agent, generation and judging of one item in
one task); the batched policy agent runs `batch_size` items through the sampler's slots, then
judges them on the pool. A bad benchmark row, a missing ground truth, an unreadable image, a
failed generation or judge call, a results file's unusable row become a failed record with its
reason; the run goes on.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm import tqdm

from gsjax.agent.types import Answer
from gsjax.eval.agents import Agent, AgentRun
from gsjax.fileio import ResultsLog, atomic_write, pin_run
from gsjax.rewards.generator import ImageGenerator, answer_request
from gsjax.rewards.types import RewardSettings

if TYPE_CHECKING:
    from gsjax.eval.results_file import ResultRow

SCORED, FAILED, GENERATED = "scored", "failed", "generated"
STAGES = ("all", "generate", "judge")


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
        "source": None,  # judged from a results file: its file and row
    }


class Runner:
    """One run folder. `agent` and `generator` are needed by the stages that run them ("all",
    "generate"); stage "judge" takes None for both, and `source` ({item id: row}) when it judges a
    results file; `name` names the run where no agent does."""

    def __init__(self, bench: Benchmark, agent: Agent | None, generator: ImageGenerator | None, run_dir: Path | str,
                 *, stage: str = "all", source: dict[str, ResultRow] | None = None, name: str = "",
                 settings: RewardSettings = RewardSettings(), concurrency: int = 8, progress: bool = True,
                 fingerprint: dict[str, Any] | None = None):
        if stage not in STAGES:
            raise ValueError(f"eval.stage must be one of {', '.join(STAGES)}, got {stage!r}")
        if stage != "judge" and (agent is None or generator is None):
            raise ValueError(f"eval.stage={stage!r} runs the agent and the generator: both are needed")
        if source is not None and stage != "judge":
            raise ValueError(f"a results file is judged by eval.stage='judge', not {stage!r}")
        self.bench, self.agent, self.generator = bench, agent, generator
        self.stage, self.source = stage, source
        self.name = agent.name if agent is not None else (name or "judge")
        self.dir = Path(run_dir)
        self.settings = settings
        self.concurrency = max(1, concurrency)
        self.progress = progress
        self.log = ResultsLog(self.dir / "results.jsonl")
        pin_run(self.dir, fingerprint or {}, elsewhere="another run_name or workdir")

    # ------------------------------------------------------------------ one item

    def finish(self, item: EvalItem, run: AgentRun | None) -> dict[str, Any]:
        """Generate and judge one item whose agent has run; the record (never raises)."""
        return self._guarded(_record(item, run, self.name), self._finish, item, run)

    def _guarded(self, rec: dict[str, Any], step: Callable[..., None], *args: Any) -> dict[str, Any]:
        """`step(*args, rec)` fills in `rec`; an exception makes it a failed record."""
        t0 = time.perf_counter()
        try:
            step(*args, rec)
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
        if self.stage == "generate":
            rec["status"] = GENERATED
            return
        self._judge(item, rec)

    def _judge(self, item: EvalItem, rec: dict[str, Any]) -> None:
        """Judge the image `rec` holds (`generated`, asked for with `sent.prompt`)."""
        verdict = self.bench.judge(item, rec["generated"], (rec.get("sent") or {}).get("prompt") or item.prompt)
        if isinstance(verdict, str):
            rec["status"], rec["error"] = FAILED, f"judge: {verdict}"
            return
        rec["scores"], rec["status"], rec["error"] = verdict, SCORED, None

    def _from_source(self, item: EvalItem, rec: dict[str, Any]) -> None:
        """Judge the image the results file names for `item`."""
        if item.invalid:
            rec["error"] = f"bad benchmark row: {item.invalid}"
            return
        row = self.source[item.id]
        rec["source"] = row.where
        if row.error:
            rec["error"] = f"results: {row.error}"
            return
        if self.bench.needs_gt and not Path(item.gt_image).is_file():
            rec["error"] = f"ground truth image missing: {item.gt_image}"
            return
        rec["generated"] = row.image
        rec["sent"] = {"prompt": row.gen_prompt or item.prompt, "refs": None}  # refs: the file does not say
        self._judge(item, rec)

    def _rejudge(self, item: EvalItem, rec: dict[str, Any]) -> None:
        """Judge a recorded image again: a pending one, or one whose judge call failed."""
        if not Path(rec["generated"]).is_file():
            rec["status"], rec["error"] = FAILED, f"generation: the recorded image {rec['generated']} does not exist"
            return
        self._judge(item, rec)

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

    def _redo(self, rec: dict[str, Any]) -> str:
        """What a resumed run does with an item's last record: "judge" it again, read its row of the
        results file again ("source"), or nothing ("")."""
        error = rec.get("error") or ""
        if self.stage != "generate" and rec.get("generated") and (
                rec["status"] == GENERATED or (rec["status"] == FAILED and error.startswith("judge:"))):
            return "judge"
        if self.source is not None and rec["status"] == FAILED and error.startswith("results:"):
            return "source"
        return ""

    # ------------------------------------------------------------------ the run

    def run(self, items: Sequence[EvalItem]) -> dict[str, Any]:
        self.log.recorded_ids([it.id for it in items], "benchmark item")  # ids must be unique
        last = self.log.latest_by_id()
        judge_only: list[tuple[Any, EvalItem, dict[str, Any]]] = []  # (step, item, the record it fills in)
        todo: list[EvalItem] = []  # for the agent
        for it in items:
            rec = last.get(it.id)
            redo = self._redo(rec) if rec is not None else ""
            if redo == "judge":
                judge_only.append((self._rejudge, it, dict(rec)))
            elif redo == "source" or (rec is None and self.source is not None):
                judge_only.append((self._from_source, it, _record(it, None, self.name)))
            elif rec is None and self.stage != "judge":
                todo.append(it)
        bar = tqdm(total=len(items), initial=len(items) - len(todo) - len(judge_only),
                   desc=f"{self.stage if self.stage != 'all' else 'eval'} {self.name}", disable=not self.progress)
        pool = cf.ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="eval")
        futures: list[cf.Future] = []
        appended: set[cf.Future] = set()

        def record(fut: cf.Future) -> None:
            self.log.append(fut.result())
            appended.add(fut)
            bar.update(1)

        try:
            futures += [pool.submit(self._guarded, rec, step, it) for step, it, rec in judge_only]
            if todo and self.agent.batched:
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
                futures += [pool.submit(self._agent_and_finish, it) for it in todo]
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
        """The recorded results of `items`, in the items' order (an id's last record: a retried
        judge call's outcome)."""
        last = self.log.latest_by_id()
        return [last[it.id] for it in items if it.id in last]

    def summary(self, items: Sequence[EvalItem]) -> dict[str, Any]:
        records = self.records(items)
        summary = self.bench.summarize([r for r in records if r["status"] != GENERATED])
        summary.update(run_summary(records, len(items)))
        atomic_write(self.dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary


def run_summary(records: Sequence[dict[str, Any]], n_items: int) -> dict[str, Any]:
    """What every benchmark reports about the run itself (`pending`: generated, not yet judged; the
    benchmark's scores leave them out)."""
    ran = [r for r in records if r.get("termination") not in (None, "no_search")]
    reasons: dict[str, int] = {}
    for r in records:
        if r["status"] == FAILED:
            kind = (r.get("error") or "unknown").split(":")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
    return {
        "items": n_items, "recorded": len(records),
        "failed": sum(r["status"] == FAILED for r in records), "failure_kinds": reasons,
        "pending": sum(r["status"] == GENERATED for r in records),
        "answered": (sum(r.get("termination") == "answer" for r in ran) / len(ran)) if ran else None,
        "tool_calls": (sum(r.get("tool_calls", 0) for r in ran) / len(ran)) if ran else None,
    }


def _safe(item_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(item_id))
