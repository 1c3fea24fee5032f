"""Reward arithmetic: R_img from the image judge's scores, the blend with the text judge, and the
rules that give 0 before any generator or judge call. Pure functions, no I/O.

One episode's reward, in the order the caller applies it (reference-spec.md section 4):

    rule = zero_rule(termination, answer, n_valid_refs)     -> zero(rule) when not None
    generate with refs_for_generator(valid_ref_paths)       -> failed("generation: ...") on failure
    image judge -> JudgeScores, text judge -> TextScore     -> failed("image judge: ...") on failure
    scored(image_reward(scores), text_score.score)

Where we differ from the reference (which returns a bare 0.0 for every one of these):
- infrastructure failures (generator, judge, missing ground truth or API key) are `failed`, so the
  trainer can leave them out of the group statistics instead of counting them as a policy's 0;
- a gen_prompt of only whitespace counts as empty (the reference tests only `== ""`).
"""

from __future__ import annotations

from collections.abc import Sequence

from gsjax.agent.types import Answer, Termination
from gsjax.rewards.types import (
    JudgeScores,
    RewardResult,
    RewardSettings,
    RewardStatus,
    ZeroRule,
)

DEFAULT_SETTINGS = RewardSettings()


def image_reward(scores: JudgeScores, settings: RewardSettings = DEFAULT_SETTINGS) -> float:
    """R_img = round(0.1 F + 0.4 V + 0.4 T + 0.1 A, 2), with T = 0.5 when text is not applicable.

    Summed in this order and rounded with Python's `round`, as the reference does, so that values
    on a rounding edge come out the same (0.1 * 0.35 = 0.034999... -> 0.03).
    """
    s = settings
    t = s.text_na_value if scores.text_accuracy is None else scores.text_accuracy
    total = (
        s.weight_faithfulness * scores.faithfulness
        + s.weight_visual * scores.visual_correctness
        + s.weight_text * t
        + s.weight_aesthetics * scores.aesthetics
    )
    return max(0.0, min(1.0, round(total, 2)))


def combine(
    image_part: float, text_part: float, settings: RewardSettings = DEFAULT_SETTINGS
) -> float:
    """R = (1 - c) * R_img + c * R_text, clamped to >= 0 (not rounded)."""
    c = settings.text_coef
    return max(0.0, (1.0 - c) * image_part + c * text_part)


def zero_rule(
    termination: Termination,
    answer: Answer | None,
    n_valid_refs: int,
    settings: RewardSettings = DEFAULT_SETTINGS,
) -> ZeroRule | None:
    """The rule that sets this episode's reward to 0 before any generator or judge call, or None.

    Checked in this order (the first that holds is returned):
    1. termination max_tokens or repeated -> OVERLONG_OR_REPEATED (the reference skips generation);
    2. termination error -> ERROR;
    3. termination parse_failed -> PARSE_FAILED; no_answer or max_rounds -> NO_ANSWER. The
       reference maps answer_parse_failed and no_answer to UNKNOWN with an `error` in the
       prediction, which scores 0 with no judge call; our max_rounds (a caller that skipped the
       forced final step) has no answer either, so it is scored the same way;
    4. no `Answer` record at all (whatever the termination) -> NO_ANSWER;
    5. gen_prompt empty after stripping whitespace -> EMPTY_GEN_PROMPT;
    6. `n_valid_refs` (references whose image file exists) outside [min_refs, max_refs]
       -> REF_COUNT.
    """
    if termination in (Termination.MAX_TOKENS, Termination.REPEATED):
        return ZeroRule.OVERLONG_OR_REPEATED
    if termination is Termination.ERROR:
        return ZeroRule.ERROR
    if termination is Termination.PARSE_FAILED:
        return ZeroRule.PARSE_FAILED
    if termination in (Termination.NO_ANSWER, Termination.MAX_ROUNDS):
        return ZeroRule.NO_ANSWER
    if answer is None:
        return ZeroRule.NO_ANSWER
    if not answer.gen_prompt.strip():
        return ZeroRule.EMPTY_GEN_PROMPT
    if not settings.min_refs <= n_valid_refs <= settings.max_refs:
        return ZeroRule.REF_COUNT
    return None


def refs_for_generator(
    valid_ref_paths: Sequence[str], settings: RewardSettings = DEFAULT_SETTINGS
) -> tuple[str, ...]:
    """The reference images sent to the generator: the first `generator_refs` valid ones."""
    return tuple(valid_ref_paths[: settings.generator_refs])


def scored(
    image_part: float,
    text_part: float | None,
    settings: RewardSettings = DEFAULT_SETTINGS,
) -> RewardResult:
    """Both judges ran: R = combine(R_img, R_text). `text_part` may be None only when text_coef is
    0 (the text judge is not called then, as in the reference)."""
    if text_part is None:
        if settings.text_coef != 0.0:
            raise ValueError(
                f"text_part is None but text_coef is {settings.text_coef}; the text judge's "
                "score is needed (text_part may be None only when text_coef is 0)"
            )
        reward = combine(image_part, 0.0, settings)
    else:
        reward = combine(image_part, text_part, settings)
    return RewardResult(reward, image_part, text_part, RewardStatus.SCORED, None)


def zero(rule: ZeroRule) -> RewardResult:
    """Reward 0 by `rule` (the policy's doing: it stays in the group statistics)."""
    return RewardResult(0.0, None, None, RewardStatus.ZERO_BY_RULE, ZeroRule(rule).value)


def failed(reason: str) -> RewardResult:
    """Nothing could be scored (generator, judge or setup failed): leaves the group statistics."""
    return RewardResult(0.0, None, None, RewardStatus.FAILED, reason)


def precheck(
    termination: Termination,
    answer: Answer | None,
    n_valid_refs: int,
    settings: RewardSettings = DEFAULT_SETTINGS,
) -> RewardResult | None:
    """The result decided before any generator or judge call, or None when the episode must be
    generated and judged. An environment error is not the policy's doing: it is `failed` and
    leaves the group statistics (design: only failures do); every other rule is `zero_by_rule`."""
    if termination is Termination.ERROR:
        return failed("environment error during the episode")
    rule = zero_rule(termination, answer, n_valid_refs, settings)
    return None if rule is None else zero(rule)
