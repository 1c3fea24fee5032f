"""The two benchmarks behind the runner's seam: their items, how an image is judged, how records
become a summary, and the printed tables.

- KnowGen (`KnowGenBenchmark`): a KnowGen-format file (the offline world's knowgen_eval.json or
  the released KnowGen-Bench JSON); the image judge (`rewards.judge`: world or OpenAI-compatible)
  grades the generated image against the ground truth; the K-Score is `knowgen.kscore`, reported
  the reference's way (failures left out) and strictly (failures as 0).
- WISE (`WiseBenchmark`): a WISE file; a WISE judge (`wise_judge`) grades the image from the prompt
  and its explanation; WiScore under both protocols (`wise.wiscore`), both ways.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gsjax.data.formats import category_group, read_knowgen_rows, read_wise_rows
from gsjax.eval.knowgen import GROUPS, ItemScore, KScore, kscore
from gsjax.eval.runner import SCORED, EvalItem
from gsjax.eval.wise import CATEGORY_ORDER, WiseItemScore, WiseJudgment, WiseScore, wiscore
from gsjax.rewards.judge import Judge
from gsjax.rewards.types import JudgeScores

SHORT_GROUP = {"science_and_knowledge": "science", "pop_culture_and_news": "pop culture"}


def _invalid(i: int, e: ValueError) -> EvalItem:
    return EvalItem(f"row{i}", "", "", invalid=str(e))


class KnowGenBenchmark:
    name = "knowgen"
    needs_gt = True

    def __init__(self, path: Path | str, judge: Judge, limit: int = 0):
        self.path, self.judge_backend, self.limit = Path(path), judge, limit

    def items(self) -> list[EvalItem]:
        rows = read_knowgen_rows(self.path)
        rows = rows[: self.limit] if self.limit else rows
        return [_invalid(i, r) if isinstance(r, ValueError) else EvalItem(str(r.id), r.prompt, r.category, r.gt_image)
                for i, r in enumerate(rows)]

    def judge(self, item: EvalItem, generated: str, gen_prompt: str) -> dict[str, Any] | str:
        s = self.judge_backend.judge_image(item.id, item.prompt, generated, item.gt_image)
        if isinstance(s, str):
            return s
        return {"F": s.faithfulness, "V": s.visual_correctness, "T": s.text_accuracy, "A": s.aesthetics,
                "rationale": s.rationale}

    def summarize(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        items = [ItemScore(r["id"], r["category"], scores_of(r)) for r in records if r["category"]]
        ref, strict = kscore(items), kscore(items, strict=True)
        return {"benchmark": "knowgen", "k_score": ref.k_score, "k_score_strict": strict.k_score,
                "reference": dataclasses.asdict(ref), "strict": dataclasses.asdict(strict),
                "invalid_rows": sum(1 for r in records if not r["category"])}


def scores_of(record: dict[str, Any]) -> JudgeScores | None:
    if record["status"] != SCORED:
        return None
    s = record["scores"]
    return JudgeScores(s["F"], s["V"], s["T"], s["A"], s.get("rationale", ""))


class WiseBenchmark:
    name = "wise"
    needs_gt = False

    def __init__(self, path: Path | str, judge, limit: int = 0):
        self.path, self.judge_backend, self.limit = Path(path), judge, limit
        self._rows: dict[str, Any] = {}

    def items(self) -> list[EvalItem]:
        rows = read_wise_rows(self.path)
        rows = rows[: self.limit] if self.limit else rows
        out = []
        for i, r in enumerate(rows):
            if isinstance(r, ValueError):
                out.append(_invalid(i, r))
            else:
                self._rows[str(r.prompt_id)] = r
                out.append(EvalItem(str(r.prompt_id), r.prompt, r.category, explanation=r.explanation))
        return out

    def judge(self, item: EvalItem, generated: str, gen_prompt: str) -> dict[str, Any] | str:
        j = self.judge_backend.judge_wise(self._rows[item.id], generated, gen_prompt)
        return j if isinstance(j, str) else dataclasses.asdict(j)

    def summarize(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        items = [WiseItemScore(r["id"], r["category"],
                               WiseJudgment(**r["scores"]) if r["status"] == SCORED else None)
                 for r in records if r["category"]]
        out: dict[str, Any] = {"benchmark": "wise",
                               "invalid_rows": sum(1 for r in records if not r["category"])}
        for protocol in ("paper", "verified"):
            ref, strict = wiscore(items, protocol), wiscore(items, protocol, strict=True)
            out[protocol] = {"overall": ref.overall, "overall_strict": strict.overall,
                             "reference": dataclasses.asdict(ref), "strict": dataclasses.asdict(strict)}
        return out


# ------------------------------------------------------------------------------- printed tables


def _f(x: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.4f}"


def knowgen_table(summaries: dict[str, dict[str, Any]]) -> str:
    """One row per run: K-Score both ways, the groups, the reference's F / V / T / A averages (failures
    left out), failures, answered fraction, tool calls."""
    lines = [f"{'run':<24}{'K-Score':>9}{'strict':>9}{'science':>9}{'pop cult':>9}{'F':>8}{'V':>8}{'T':>8}{'A':>8}"
             f"{'items':>7}{'failed':>7}{'answered':>9}{'tools':>7}"]
    for name, s in summaries.items():
        g, d = s["reference"]["groups"], s["reference"]["dimensions"]
        lines.append(f"{name:<24}{_f(s['k_score'], 9)}{_f(s['k_score_strict'], 9)}"
                     f"{_f(g[GROUPS[0]]['overall'], 9)}{_f(g[GROUPS[1]]['overall'], 9)}"
                     + "".join(_f(d[k], 8) for k in "FVTA")
                     + f"{s['items']:>7}{s['failed']:>7}{_f(s['answered'], 9)}{_f(s['tool_calls'], 7)}")
    return "\n".join(lines)


def category_table(summary: dict[str, Any]) -> str:
    """Per category (failures left out): n, F, V, T, A and overall."""
    lines = [f"{'category':<28}{'group':<13}{'n':>5}{'F':>8}{'V':>8}{'T':>8}{'A':>8}{'overall':>9}"]
    for cat, c in summary["reference"]["categories"].items():
        lines.append(f"{cat:<28}{SHORT_GROUP[category_group(cat)]:<13}{c['n']:>5}{_f(c['F'], 8)}{_f(c['V'], 8)}"
                     f"{_f(c['T'], 8)}{_f(c['A'], 8)}{_f(c['overall'], 9)}")
    return "\n".join(lines)


def wise_table(summaries: dict[str, dict[str, Any]]) -> str:
    head = f"{'run':<24}{'protocol':<10}{'overall':>9}{'strict':>9}" + "".join(f"{c[:8]:>9}" for c in CATEGORY_ORDER)
    lines = [head]
    for name, s in summaries.items():
        for protocol in ("paper", "verified"):
            p = s[protocol]
            cats = p["reference"]["categories"]
            lines.append(f"{name:<24}{protocol:<10}{_f(p['overall'], 9)}{_f(p['overall_strict'], 9)}"
                         + "".join(_f(cats[c]["mean"] if cats[c]["n"] else None, 9) for c in CATEGORY_ORDER))
    return "\n".join(lines)


__all__ = ["KScore", "KnowGenBenchmark", "WiseBenchmark", "WiseScore", "category_table", "knowgen_table",
           "wise_table"]
