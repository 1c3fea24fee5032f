"""WISE's WiScore from per-item judgments, both protocols. Pure functions, no I/O.

Semantics follow the WISE repository's scoring scripts (PKU-YuanGroup/WISE at eb51174:
`WISE_legacy/Calculate.py` and `calculate_verified.py`):

- paper protocol (WISE_legacy, GPT-4o judge): the judge gives consistency, realism and aesthetic
  quality, each 0-2; an item's WiScore = (0.7 consistency + 0.2 realism + 0.1 aesthetic) / 2, in
  [0, 1]; a category's score is the mean of its items; overall = 0.4 cultural + 0.167 time +
  0.133 space + 0.1 biology + 0.1 physics + 0.1 chemistry.
- verified protocol (WISE_Verified): one binary judgment per item (1: the image realises the
  prompt's world-knowledge meaning and is realistic and usable; 0 otherwise); category means;
  overall = 0.4 cultural + 0.12 x each of the other five.
- the overall is reported only when every one of the six categories has a scored item (the scripts
  refuse otherwise); `missing` names the empty ones.

Categories come from each item's `Category` field (`wise_category`), which for the released files
agrees with the scripts' prompt_id ranges. Failures (no image, judge failed) are left out
(`strict=False`; the scripts skip unreadable judgments) or count as 0 (`strict=True`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from gsjax.data.formats import wise_category

CATEGORY_ORDER = ("cultural", "time", "space", "biology", "physics", "chemistry")
PAPER_WEIGHTS = {"cultural": 0.4, "time": 0.167, "space": 0.133, "biology": 0.1, "physics": 0.1, "chemistry": 0.1}
VERIFIED_WEIGHTS = {"cultural": 0.4, "time": 0.12, "space": 0.12, "biology": 0.12, "physics": 0.12, "chemistry": 0.12}
PROTOCOLS = ("paper", "verified")


def _check(name: str, value: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        raise ValueError(f"{name} must be a number in [0, {high}], got {value!r}")


@dataclasses.dataclass(frozen=True)
class WiseJudgment:
    """One image's verdicts: the paper's three scores (0-2 each) and the verified protocol's binary
    one (None when the judge did not give it)."""

    consistency: float
    realism: float
    aesthetic: float
    verified: int | None = None
    rationale: str = ""

    def __post_init__(self) -> None:
        _check("consistency", self.consistency, 2)
        _check("realism", self.realism, 2)
        _check("aesthetic", self.aesthetic, 2)
        if self.verified is not None and self.verified not in (0, 1):
            raise ValueError(f"verified must be 0 or 1, got {self.verified!r}")


def paper_item_score(j: WiseJudgment) -> float:
    """(0.7 consistency + 0.2 realism + 0.1 aesthetic) / 2."""
    return (0.7 * j.consistency + 0.2 * j.realism + 0.1 * j.aesthetic) / 2


@dataclasses.dataclass(frozen=True)
class WiseItemScore:
    id: int | str
    category: str  # as written in the file, or the short name
    judgment: WiseJudgment | None  # None: the item failed


@dataclasses.dataclass(frozen=True)
class CategoryScore:
    n: int
    mean: float


@dataclasses.dataclass(frozen=True)
class WiseScore:
    protocol: str
    overall: float | None  # None when a category has no scored item
    categories: dict[str, CategoryScore]  # the six, in CATEGORY_ORDER
    missing: tuple[str, ...]  # categories with no scored item
    n_items: int
    n_failed: int
    strict: bool


def wiscore(items: Iterable[WiseItemScore], protocol: str = "paper", strict: bool = False) -> WiseScore:
    """WiScore of `items` under `protocol` ("paper" or "verified"). Under "verified", an item whose
    judgment has no binary verdict counts as failed."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    weights = PAPER_WEIGHTS if protocol == "paper" else VERIFIED_WEIGHTS
    values: dict[str, list[float]] = {c: [] for c in CATEGORY_ORDER}
    n_items = n_failed = 0
    for item in items:
        try:
            category = wise_category(item.category)
        except ValueError as e:
            raise ValueError(f"item {item.id!r}: {e}") from None
        n_items += 1
        j = item.judgment
        value = None
        if j is not None:
            value = paper_item_score(j) if protocol == "paper" else (None if j.verified is None else float(j.verified))
        if value is None:
            n_failed += 1
            if not strict:
                continue
            value = 0.0
        values[category].append(value)
    cats = {c: CategoryScore(len(v), sum(v) / len(v) if v else 0.0) for c, v in values.items()}
    missing = tuple(c for c in CATEGORY_ORDER if not values[c])
    overall = None if missing else math.fsum(weights[c] * cats[c].mean for c in CATEGORY_ORDER)
    return WiseScore(protocol, overall, cats, missing, n_items, n_failed, strict)
