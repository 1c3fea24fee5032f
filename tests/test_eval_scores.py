"""K-Score and WiScore aggregation against hand-computed fixtures; the WISE reader and judges."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gsjax.data.formats import WISE_CATEGORIES, read_wise, read_wise_rows
from gsjax.eval.knowgen import ItemScore, kscore
from gsjax.eval.wise import PAPER_WEIGHTS, VERIFIED_WEIGHTS, WiseItemScore, WiseJudgment, paper_item_score, wiscore
from gsjax.eval.wise_judge import LocalWiseJudge, parse_wise_judge, referent
from gsjax.rewards.types import JudgeScores

WISE_DIR = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "wise"


def js(f, v, t, a):
    return JudgeScores(f, v, t, a)


# science: F mean 0.5, V mean 1/3 -> 0.3333 (rounded first), T over the two text items 0.5, A 2.5/3 -> 0.8333;
# overall 0.1 * 0.5 + 0.4 * 0.3333 + 0.4 * 0.5 + 0.1 * 0.8333 = 0.46665, rounded to 4 decimals as the reference does
SCIENCE = [ItemScore(1, "Biology", js(1, 0.5, None, 1)), ItemScore(2, "physics", js(0.5, 0, 1, 0.5)),
           ItemScore(3, " Physics ", js(0, 0.5, 0, 1))]
SCIENCE_OVERALL = 0.4667
# pop culture: one item, no text-requiring item: T falls back to 0.5
POP = [ItemScore(4, "anime", js(1, 1, None, 1))]
POP_OVERALL = 0.8  # 0.1 + 0.4 + 0.4 * 0.5 + 0.1
K_SCORE = 0.6334  # (0.4667 + 0.8) / 2 = 0.63335, rounded to 4 decimals


def test_kscore_matches_hand_computed_groups_with_rounded_means_and_text_fallback():
    k = kscore(SCIENCE + POP)
    sci, pop = k.groups["science_and_knowledge"], k.groups["pop_culture_and_news"]
    assert (sci.n, sci.n_text, sci.F, sci.V, sci.T, sci.A) == (3, 2, 0.5, 0.3333, 0.5, 0.8333)
    assert sci.overall == SCIENCE_OVERALL
    assert (pop.T, pop.n_text, pop.overall) == (0.5, 0, POP_OVERALL)
    assert k.k_score == K_SCORE
    assert k.categories["physics"].n == 2 and k.categories["biology"].T == 0.5  # per-category tables


def test_kscore_fixture_of_reference_judge_outputs_with_text_na_failures_and_mixed_case_categories():
    # ten items as the reference's judge writes them (text_accuracy_na -> None); hand-computed:
    # science (astronomy, Medicine, sports, history): F (1 + .5 + .5 + 0) / 4 = 0.5, V (1 + 0 + .5 + .5) / 4 = 0.5,
    #   T over the two text items (1 + .5) / 2 = 0.75, A (1 + 1 + .5 + .5) / 4 = 0.75
    #   -> 0.05 + 0.2 + 0.3 + 0.075 = 0.625
    # pop culture (film, multi-subject-anime, News; the game item failed): F (.5 + 1 + 0) / 3 = 0.5,
    #   V (0 + 1 + .5) / 3 = 0.5, T over the one text item 0 -> 0, A (.5 + 1 + .5) / 3 = 0.6667
    #   -> 0.05 + 0.2 + 0 + 0.06667 = 0.31667 -> 0.3167;  K-Score (0.625 + 0.3167) / 2 = 0.47085 -> 0.4708
    #   (Python round of the float 0.470849999..., as the reference computes it)
    items = [ItemScore("a", "astronomy", js(1, 1, 1, 1)), ItemScore("b", "Medicine", js(0.5, 0, None, 1)),
             ItemScore("c", "sports", js(0.5, 0.5, 0.5, 0.5)), ItemScore("d", "history", js(0, 0.5, None, 0.5)),
             ItemScore("e", "film", js(0.5, 0, None, 0.5)), ItemScore("f", "multi-subject-anime", js(1, 1, None, 1)),
             ItemScore("g", "News", js(0, 0.5, 0, 0.5)), ItemScore("h", "game", None)]
    k = kscore(items)
    sci, pop = k.groups["science_and_knowledge"], k.groups["pop_culture_and_news"]
    assert (sci.n, sci.n_text, sci.F, sci.V, sci.T, sci.A, sci.overall) == (4, 2, 0.5, 0.5, 0.75, 0.75, 0.625)
    assert (pop.n, pop.n_text, pop.F, pop.V, pop.T, pop.A, pop.overall) == (3, 1, 0.5, 0.5, 0.0, 0.6667, 0.3167)
    assert k.k_score == 0.4708 and (k.n_items, k.n_failed) == (8, 1)
    # The reference's overall_avg per dimension: each the mean of the two groups' (0.625 + 0.3167) / 2 is the K-Score.
    assert k.dimensions == {"F": 0.5, "V": 0.5, "T": 0.375, "A": round((0.75 + 0.6667) / 2, 4)}
    assert sorted(k.categories) == ["astronomy", "film", "history", "medicine", "multi-subject-anime", "news", "sports"]
    strict = kscore(items, strict=True).groups["pop_culture_and_news"]  # the failure as (0, 0, 0, 0) needing text
    assert (strict.n, strict.n_text, strict.F, strict.V, strict.T, strict.A) == (4, 2, 0.375, 0.375, 0.0, 0.5)


def test_failures_are_left_out_by_the_reference_and_count_as_zero_when_strict():
    items = SCIENCE + POP + [ItemScore(5, "film", None)]
    ref, strict = kscore(items), kscore(items, strict=True)
    assert ref.k_score == kscore(SCIENCE + POP).k_score and ref.n_failed == 1 and ref.n_items == 5
    pop = strict.groups["pop_culture_and_news"]  # (1,1,n/a,1) and a failure (0,0,0,0) that needs text
    assert (pop.n, pop.F, pop.V, pop.T, pop.A, pop.overall) == (2, 0.5, 0.5, 0.0, 0.5, 0.3)
    assert strict.k_score == round((SCIENCE_OVERALL + 0.3) / 2, 4)  # 0.3833


def test_an_empty_group_reports_zero_and_still_halves_the_kscore():
    k = kscore(POP)
    assert k.groups["science_and_knowledge"].overall == 0.0 and k.groups["science_and_knowledge"].n == 0
    assert k.k_score == POP_OVERALL / 2
    assert k.dimensions == {"F": 0.5, "V": 0.5, "T": 0.25, "A": 0.5}  # the empty group's 0.0 (not T's 0.5) halves each
    assert kscore([]).k_score == 0.0


def test_unknown_category_is_a_clear_error_naming_the_item():
    with pytest.raises(ValueError, match=r"item 7: category 'cooking' is in neither KnowGen group"):
        kscore(POP + [ItemScore(7, "cooking", js(1, 1, 1, 1))])


def _one_per_category(paper, verified):
    cats = list(WISE_CATEGORIES)
    return [WiseItemScore(i, cats[i % 6] if i < 6 else cats[0], WiseJudgment(*p, verified=v))
            for i, (p, v) in enumerate(zip(paper, verified))]


# cultural: (2,2,2) -> 1.0 and (1,0,2) -> 0.45, mean 0.725; time (2,1,1) -> 0.85; space (0,2,2) -> 0.3;
# biology (1,1,1) -> 0.5; physics (2,0,0) -> 0.7; chemistry (0,0,0) -> 0
PAPER = [(2, 2, 2), (2, 1, 1), (0, 2, 2), (1, 1, 1), (2, 0, 0), (0, 0, 0), (1, 0, 2)]
VERIFIED = [1, 1, 0, 1, 1, 0, 0]


def test_paper_wiscore_matches_hand_computed_categories_and_weights():
    assert paper_item_score(WiseJudgment(1, 0, 2)) == pytest.approx(0.45)
    s = wiscore(_one_per_category(PAPER, VERIFIED), "paper")
    means = {c: s.categories[c].mean for c in s.categories}
    assert means == pytest.approx({"cultural": 0.725, "time": 0.85, "space": 0.3, "biology": 0.5,
                                   "physics": 0.7, "chemistry": 0.0})
    assert s.overall == pytest.approx(0.4 * 0.725 + 0.167 * 0.85 + 0.133 * 0.3 + 0.1 * 0.5 + 0.1 * 0.7)  # 0.59185
    assert sum(PAPER_WEIGHTS.values()) == pytest.approx(1.0) and sum(VERIFIED_WEIGHTS.values()) == pytest.approx(1.0)


def test_verified_wiscore_is_binary_with_culture_weighted_040_and_the_rest_012():
    s = wiscore(_one_per_category(PAPER, VERIFIED), "verified")
    assert s.categories["cultural"].mean == 0.5 and s.categories["space"].mean == 0.0
    assert s.overall == pytest.approx(0.4 * 0.5 + 0.12 * (1 + 0 + 1 + 1 + 0))  # 0.56


def test_wiscore_failures_missing_categories_and_unknown_categories():
    items = _one_per_category(PAPER, VERIFIED)
    items.append(WiseItemScore(99, "Chemistry", None))
    assert wiscore(items, "paper").categories["chemistry"].n == 1
    strict = wiscore(items, "paper", strict=True)
    assert strict.categories["chemistry"].n == 2 and strict.n_failed == 1
    no_verdict = [WiseItemScore(1, "Space", WiseJudgment(2, 2, 2, verified=None))]
    assert wiscore(no_verdict, "verified").n_failed == 1 and wiscore(no_verdict, "paper").n_failed == 0
    partial = wiscore(items[:3], "paper")  # cultural, time, space only: the scripts give no overall
    assert partial.overall is None and partial.missing == ("biology", "physics", "chemistry")
    with pytest.raises(ValueError, match="item 5: category 'Astrology' is not a WISE category"):
        wiscore([WiseItemScore(5, "Astrology", WiseJudgment(1, 1, 1))])
    with pytest.raises(ValueError, match="consistency must be a number in"):
        WiseJudgment(3, 1, 1)


def test_wise_reader_names_file_row_and_field(tmp_path):
    path = tmp_path / "wise.json"
    rows = [{"Prompt": "p", "Explanation": "This refers to x", "Category": "time", "Subcategory": "s", "prompt_id": 1},
            {"Explanation": "e", "Category": "Space", "Subcategory": "s", "prompt_id": 2},
            {"Prompt": "p", "Explanation": "e", "Category": "Astrology", "Subcategory": "s", "prompt_id": 3}]
    path.write_text(json.dumps(rows))
    got = read_wise_rows(path)
    assert got[0].short_category == "time"
    assert isinstance(got[1], ValueError) and f"{path}: row 1: field 'Prompt'" in str(got[1])
    assert "row 2: field 'Category'" in str(got[2])
    with pytest.raises(ValueError, match="row 1: field 'Prompt'"):
        read_wise(path)


@pytest.mark.skipif(not WISE_DIR.is_dir(), reason=f"WISE data not at {WISE_DIR} (shared benchmark folder absent)")
def test_released_wise_files_read_with_their_category_counts():
    legacy = [it for f in sorted(WISE_DIR.glob("legacy_*.json")) for it in read_wise(f)]
    verified = read_wise(WISE_DIR / "verified_merge.json")
    count = lambda items: {c: sum(it.short_category == c for it in items) for c in PAPER_WEIGHTS}  # noqa: E731
    assert count(legacy) == {"cultural": 400, "time": 167, "space": 133, "biology": 100, "physics": 100, "chemistry": 100}
    assert count(verified) == {"cultural": 400, "time": 120, "space": 120, "biology": 120, "physics": 120, "chemistry": 120}
    # the paper's time/space weights are its category shares of the spatio-temporal 300 prompts
    assert PAPER_WEIGHTS["time"] == pytest.approx(0.5 * 167 / 500, abs=1e-3)


def test_wise_judge_reply_parsing():
    j = parse_wise_judge('```json\n{"rationale": "ok", "consistency": 2, "realism": "1", "aesthetic_quality": 0.6, "verified": true,}\n```')
    assert (j.consistency, j.realism, j.aesthetic, j.verified) == (2, 1, 1, 1)
    assert parse_wise_judge('{"consistency": 2, "realism": 1, "aesthetic_quality": 1}').verified is None
    assert "no 'realism'" in parse_wise_judge('{"consistency": 2, "aesthetic_quality": 1}')
    assert isinstance(parse_wise_judge("I like it."), str)


def test_local_wise_judge_scores_the_named_referent_and_usable_pixels(tmp_path):
    from gsjax.data.formats import WiseItem

    item = WiseItem(1, "Traditional food of the Mid-Autumn Festival",
                    "This refers to mooncakes, the round pastries filled with lotus seed paste", "Cultural knowledge", "")
    assert referent(item.explanation) == "mooncakes"
    busy, flat = tmp_path / "busy.png", tmp_path / "flat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), np.uint8)).save(busy)
    Image.new("RGB", (96, 96), "white").save(flat)
    judge = LocalWiseJudge()
    right = judge.judge_wise(item, str(busy), "A plate of mooncakes at night")
    assert (right.consistency, right.realism, right.verified) == (2, 1, 1)
    assert judge.judge_wise(item, str(busy), item.prompt).consistency == 0  # the prompt never says mooncakes
    assert judge.judge_wise(item, str(flat), "mooncakes").verified == 0
    (tmp_path / "bad.png").write_text("not an image")
    assert "unreadable image" in judge.judge_wise(item, str(tmp_path / "bad.png"), "mooncakes")
