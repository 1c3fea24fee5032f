"""KnowGen's K-Score from per-item image-judge scores. Pure functions, no I/O.

The reference's aggregation (reference-spec.md sections 8 and 10, `KnowGen_Eval/gpt_eval_knowgen.py`):

- items are split by category into KnowGen's two groups (`category_group`; an unknown category
  is an error naming the item);
- per group: the means of F, V and A over the scored items and the mean of T over the items that
  need text (`text_accuracy` not None), each rounded to 4 decimals; T is 0.5 when no item of the
  group needs text; the group's overall is 0.1 F + 0.4 V + 0.4 T + 0.1 A of those rounded means;
  a group with no scored item reports 0.0 for everything; the overall is rounded to 4 decimals;
- K-Score (`overall_avg`) = the unweighted mean of the two groups' overalls, rounded to 4
  decimals, even when one group is empty; difficulty is not used. The reference's `overall_avg`
  also holds F, V, T and A, each the mean of the two groups' values rounded to 4 decimals
  (`KScore.dimensions`).

Failures (generation failed, judge failed, ground truth missing) are left out by the reference
(`strict=False`). `strict=True` counts each failure as an item scoring 0 on F, V and A that needs
text and scores 0 on T: the score an agent would get if every failure were its fault. Per-category
tables use the same rules as a group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from gsjax.data.formats import POP_CULTURE_AND_NEWS, SCIENCE_AND_KNOWLEDGE, category_group
from gsjax.rewards.types import JudgeScores

GROUPS = (SCIENCE_AND_KNOWLEDGE, POP_CULTURE_AND_NEWS)
WEIGHTS = {"F": 0.1, "V": 0.4, "T": 0.4, "A": 0.1}
TEXT_FALLBACK = 0.5
DECIMALS = 4
_FAILED_AS_ZERO = JudgeScores(0.0, 0.0, 0.0, 0.0, "failure counted as 0")


@dataclasses.dataclass(frozen=True)
class ItemScore:
    """One benchmark item's judge scores, or None when the item failed."""

    id: str | int
    category: str
    scores: JudgeScores | None


@dataclasses.dataclass(frozen=True)
class GroupScore:
    n: int  # scored items (failures included when strict)
    n_text: int  # of which need text
    F: float
    V: float
    T: float
    A: float
    overall: float


@dataclasses.dataclass(frozen=True)
class KScore:
    k_score: float  # the reference's overall_avg
    dimensions: dict[str, float]  # F, V, T, A of overall_avg: each the mean of the two groups'
    groups: dict[str, GroupScore]  # both groups, always
    categories: dict[str, GroupScore]  # categories seen (lower case), in sorted order
    n_items: int
    n_failed: int
    strict: bool


def group_score(scores: Sequence[JudgeScores]) -> GroupScore:
    """One group's (or category's) means and overall, by the reference's rules."""
    if not scores:
        return GroupScore(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
    n = len(scores)
    texts = [s.text_accuracy for s in scores if s.text_accuracy is not None]
    f = round(sum(s.faithfulness for s in scores) / n, DECIMALS)
    v = round(sum(s.visual_correctness for s in scores) / n, DECIMALS)
    a = round(sum(s.aesthetics for s in scores) / n, DECIMALS)
    t = round(sum(texts) / len(texts), DECIMALS) if texts else TEXT_FALLBACK
    overall = round(WEIGHTS["F"] * f + WEIGHTS["V"] * v + WEIGHTS["T"] * t + WEIGHTS["A"] * a, DECIMALS)
    return GroupScore(n, len(texts), f, v, t, a, overall)


def kscore(items: Iterable[ItemScore], strict: bool = False) -> KScore:
    """The K-Score of `items` (failures left out, or counted as 0 with `strict`)."""
    by_group: dict[str, list[JudgeScores]] = {g: [] for g in GROUPS}
    by_category: dict[str, list[JudgeScores]] = {}
    n_items = n_failed = 0
    for item in items:
        try:
            group = category_group(item.category)
        except ValueError as e:
            raise ValueError(f"item {item.id!r}: {e}") from None
        n_items += 1
        scores = item.scores
        if scores is None:
            n_failed += 1
            if not strict:
                continue
            scores = _FAILED_AS_ZERO
        by_group[group].append(scores)
        by_category.setdefault(item.category.strip().lower(), []).append(scores)
    groups = {g: group_score(s) for g, s in by_group.items()}
    categories = {c: group_score(by_category[c]) for c in sorted(by_category)}
    k = round(sum(g.overall for g in groups.values()) / len(GROUPS), DECIMALS)
    dims = {d: round(sum(getattr(g, d) for g in groups.values()) / len(GROUPS), DECIMALS) for d in WEIGHTS}
    return KScore(k, dims, groups, categories, n_items, n_failed, strict)


def to_dict(score: KScore) -> dict:
    return dataclasses.asdict(score)
