"""gsjax.rewards.score: R_img, the blend with the text judge, and the zero-reward rules
(reference-spec.md section 4). Expected values are computed by hand."""

from __future__ import annotations

import dataclasses

import pytest

from gsjax.agent.types import Answer, AnswerRef, Termination
from gsjax.rewards.score import (
    combine,
    failed,
    image_reward,
    refs_for_generator,
    scored,
    zero,
    zero_rule,
)
from gsjax.rewards.types import (
    JudgeScores,
    RewardResult,
    RewardSettings,
    RewardStatus,
    ZeroRule,
)


def scores(f: float, v: float, t: float | None, a: float) -> JudgeScores:
    return JudgeScores(f, v, t, a, rationale="")


def answer(gen_prompt: str = "the first reference image's emblem on a banner", n_refs: int = 2):
    refs = tuple(
        AnswerRef(f"IMG_{i:03d}", "emblem", f"/cache/{i}.jpg") for i in range(1, n_refs + 1)
    )
    return Answer(gen_prompt, refs)


# ---------------------------------------------------------------------------------------------
# R_img = round(0.1 F + 0.4 V + 0.4 T + 0.1 A, 2)


@pytest.mark.parametrize(
    ("f", "v", "t", "a", "expected"),
    [
        (1, 1, 1, 1, 1.0),
        (0, 0, 0, 0, 0.0),
        (1, 0.5, 0.5, 0.5, 0.55),  # 0.1 + 0.2 + 0.2 + 0.05
        (0.5, 1, 0, 0.5, 0.5),  # 0.05 + 0.4 + 0 + 0.05
        (1, 1, 0, 1, 0.6),  # wrong text costs 0.4
        (0, 0, 1, 0, 0.4),
    ],
)
def test_image_reward_weights_f_v_t_a_as_0_1_0_4_0_4_0_1(f, v, t, a, expected):
    assert image_reward(scores(f, v, t, a)) == expected


def test_image_reward_counts_text_not_applicable_as_0_5():
    # 0.1*1 + 0.4*1 + 0.4*0.5 + 0.1*1 = 0.8
    assert image_reward(scores(1, 1, None, 1)) == 0.8
    # 0.1*0 + 0.4*0.5 + 0.4*0.5 + 0.1*0 = 0.4
    assert image_reward(scores(0, 0.5, None, 0)) == 0.4
    assert image_reward(scores(0, 0, None, 0)) == 0.2


def test_image_reward_rounds_to_two_decimals_with_python_round():
    # 0.1 * 0.55 = 0.05500000000000001 -> 0.06
    assert image_reward(scores(0.55, 0, 0, 0)) == 0.06
    # 0.1 * 0.35 = 0.034999999999999996 -> 0.03 (not half-up 0.04)
    assert image_reward(scores(0.35, 0, 0, 0)) == 0.03
    # 0.1 * 0.15 = 0.015 as a float is 0.01499999... -> 0.01
    assert image_reward(scores(0.15, 0, 0, 0)) == 0.01
    # 0.1*0.33 + 0.4*0.33 + 0.4*0.33 + 0.1*0.33 = 0.33000000000000007 -> 0.33
    assert image_reward(scores(0.33, 0.33, 0.33, 0.33)) == 0.33


def test_image_reward_uses_the_settings_weights_and_na_value():
    settings = RewardSettings(
        weight_faithfulness=0.25,
        weight_visual=0.25,
        weight_text=0.25,
        weight_aesthetics=0.25,
        text_na_value=1.0,
    )
    assert image_reward(scores(1, 0, None, 0), settings) == 0.5  # 0.25 + 0 + 0.25 + 0


# ---------------------------------------------------------------------------------------------
# R = (1 - c) R_img + c R_text


def test_combine_with_the_default_c_0_5_is_the_mean():
    assert combine(0.55, 0.75) == pytest.approx(0.65)
    assert combine(1.0, 0.0) == 0.5
    assert combine(0.0, 0.0) == 0.0


def test_combine_with_other_c():
    assert combine(0.55, 0.75, RewardSettings(text_coef=0.3)) == pytest.approx(0.61)  # .385 + .225
    assert combine(0.55, 0.75, RewardSettings(text_coef=0.0)) == 0.55
    assert combine(0.55, 0.75, RewardSettings(text_coef=1.0)) == 0.75


def test_combine_is_clamped_at_zero_and_not_rounded():
    assert combine(-0.4, 0.0) == 0.0
    assert combine(0.85, 0.5) == pytest.approx(0.675)  # stays 0.675, not 0.68


# ---------------------------------------------------------------------------------------------
# Zero-reward rules (before any generator or judge call)


@pytest.mark.parametrize(
    ("termination", "rule"),
    [
        (Termination.MAX_TOKENS, ZeroRule.OVERLONG_OR_REPEATED),
        (Termination.REPEATED, ZeroRule.OVERLONG_OR_REPEATED),
        (Termination.ERROR, ZeroRule.ERROR),
        (Termination.PARSE_FAILED, ZeroRule.PARSE_FAILED),
        (Termination.NO_ANSWER, ZeroRule.NO_ANSWER),
        (Termination.MAX_ROUNDS, ZeroRule.NO_ANSWER),
    ],
)
def test_every_termination_but_answer_is_zero_by_rule(termination, rule):
    # even with a well-formed answer attached, the termination decides
    assert zero_rule(termination, answer(), n_valid_refs=2) is rule
    assert zero_rule(termination, None, n_valid_refs=0) is rule


def test_a_good_answer_has_no_zero_rule():
    assert zero_rule(Termination.ANSWER, answer(), n_valid_refs=2) is None


def test_answer_termination_without_an_answer_record_is_no_answer():
    assert zero_rule(Termination.ANSWER, None, n_valid_refs=2) is ZeroRule.NO_ANSWER


@pytest.mark.parametrize("gen_prompt", ["", " ", "\n\t  \n"])
def test_empty_or_whitespace_gen_prompt_is_zero(gen_prompt):
    assert zero_rule(Termination.ANSWER, answer(gen_prompt), 2) is ZeroRule.EMPTY_GEN_PROMPT


def test_empty_gen_prompt_is_checked_before_the_reference_count():
    assert zero_rule(Termination.ANSWER, answer(""), 0) is ZeroRule.EMPTY_GEN_PROMPT


@pytest.mark.parametrize(
    ("n_valid_refs", "rule"),
    [(0, ZeroRule.REF_COUNT), (1, None), (2, None), (3, None), (4, None), (5, ZeroRule.REF_COUNT)],
)
def test_valid_reference_count_must_be_within_1_and_4(n_valid_refs, rule):
    assert zero_rule(Termination.ANSWER, answer(n_refs=5), n_valid_refs) is rule


def test_reference_count_range_comes_from_the_settings():
    settings = RewardSettings(min_refs=2, max_refs=5)
    assert zero_rule(Termination.ANSWER, answer(), 1, settings) is ZeroRule.REF_COUNT
    assert zero_rule(Termination.ANSWER, answer(), 5, settings) is None
    assert zero_rule(Termination.ANSWER, answer(), 6, settings) is ZeroRule.REF_COUNT


def test_the_generator_gets_the_first_three_valid_references():
    paths = ["/c/1.jpg", "/c/2.jpg", "/c/3.jpg", "/c/4.jpg"]
    assert refs_for_generator(paths) == ("/c/1.jpg", "/c/2.jpg", "/c/3.jpg")
    assert refs_for_generator(paths[:2]) == ("/c/1.jpg", "/c/2.jpg")
    assert refs_for_generator(paths, RewardSettings(generator_refs=1)) == ("/c/1.jpg",)


# ---------------------------------------------------------------------------------------------
# RewardResult: scored, zero_by_rule and failed


def test_scored_blends_the_two_parts():
    result = scored(0.55, 0.75)  # 0.5 * 0.55 + 0.5 * 0.75
    assert result.reward == pytest.approx(0.65)
    assert (result.image_part, result.text_part) == (0.55, 0.75)
    assert (result.status, result.reason) == (RewardStatus.SCORED, None)
    assert result.in_group_statistics


def test_scored_without_text_part_needs_text_coef_0():
    result = scored(0.55, None, RewardSettings(text_coef=0.0))
    assert (result.reward, result.image_part, result.text_part) == (0.55, 0.55, None)
    with pytest.raises(ValueError, match="text_coef"):
        scored(0.55, None)


def test_zero_by_rule_and_failed_are_distinct():
    z = zero(ZeroRule.REF_COUNT)
    f = failed("image judge: no JSON object in the judge reply")
    assert z == RewardResult(0.0, None, None, RewardStatus.ZERO_BY_RULE, "ref_count")
    assert f == RewardResult(
        0.0, None, None, RewardStatus.FAILED, "image judge: no JSON object in the judge reply"
    )
    assert z.reward == f.reward == 0.0
    assert z.status is not f.status
    assert z.in_group_statistics  # a policy's zero counts in its group's mean and std
    assert not f.in_group_statistics  # an infrastructure failure does not


def test_reward_result_rejects_inconsistent_records():
    with pytest.raises(ValueError, match="needs a reason"):
        RewardResult(0.0, None, None, RewardStatus.FAILED, None)
    with pytest.raises(ValueError, match="needs a reason"):
        RewardResult(0.0, None, None, RewardStatus.ZERO_BY_RULE, "")
    with pytest.raises(ValueError, match="reward 0"):
        RewardResult(0.3, None, None, RewardStatus.ZERO_BY_RULE, "ref_count")
    with pytest.raises(ValueError, match="no reason"):
        RewardResult(0.5, 0.5, 0.5, RewardStatus.SCORED, "why")
    with pytest.raises(ValueError, match="finite"):
        RewardResult(float("nan"), 0.5, 0.5, RewardStatus.SCORED, None)


# ---------------------------------------------------------------------------------------------
# Settings and records


def test_default_settings_are_the_reference_constants():
    s = RewardSettings()
    assert (s.text_coef, s.min_refs, s.max_refs, s.generator_refs) == (0.5, 1, 4, 3)
    assert (s.weight_faithfulness, s.weight_visual, s.weight_text, s.weight_aesthetics) == (
        0.1, 0.4, 0.4, 0.1,
    )
    assert s.text_na_value == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.text_coef = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"text_coef": 1.5},
        {"text_coef": -0.1},
        {"min_refs": 3, "max_refs": 2},
        {"min_refs": -1},
        {"generator_refs": 0},
        {"weight_visual": -0.4},
        {"text_na_value": float("nan")},
    ],
)
def test_settings_reject_bad_values(kwargs):
    with pytest.raises(ValueError):
        RewardSettings(**kwargs)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "1"])
def test_judge_scores_reject_values_outside_0_1(bad):
    with pytest.raises(ValueError, match="visual_correctness"):
        JudgeScores(1.0, bad, None, 1.0)


def test_precheck_makes_environment_errors_failures_and_rules_zero():
    from gsjax.rewards.score import precheck

    err = precheck(Termination.ERROR, answer(), n_valid_refs=2)
    assert err.status is RewardStatus.FAILED and not err.in_group_statistics
    rep = precheck(Termination.REPEATED, answer(), n_valid_refs=2)
    assert rep.status is RewardStatus.ZERO_BY_RULE and rep.reason == ZeroRule.OVERLONG_OR_REPEATED.value
    assert rep.in_group_statistics
    assert precheck(Termination.ANSWER, answer(), n_valid_refs=2) is None
