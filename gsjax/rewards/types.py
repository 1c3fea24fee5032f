"""Records that cross the reward's seams: judge scores, reward results, settings, judge requests.

The judge clients (HTTP or the offline world judge) produce `JudgeScores` and `TextScore`; the
pure functions in `score.py` turn them into a `RewardResult`; the trainer reads `RewardResult`
and leaves `failed` ones out of the group statistics. The prompts in `rubrics.py` come out as a
`JudgeRequest` that a client turns into its wire format.
"""

from __future__ import annotations

import dataclasses
import enum
import math


def _check_unit(name: str, value: float) -> None:
    # `not 0 <= x <= 1` also rejects NaN.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


@dataclasses.dataclass(frozen=True)
class JudgeScores:
    """The image judge's verdict on one generated image against the ground truth.

    Each score is in [0, 1] (the rubric asks for 0, 0.5 or 1; parsed replies are clipped and
    rounded to 2 decimals). `text_accuracy` is None when the prompt needs no readable text.
    """

    faithfulness: float  # F: everything the prompt asks for is present
    visual_correctness: float  # V: identity and stable visual features match the ground truth
    text_accuracy: float | None  # T: rendered text correct and readable; None = not applicable
    aesthetics: float  # A: quality relative to the ground truth
    rationale: str = ""

    def __post_init__(self) -> None:
        _check_unit("faithfulness", self.faithfulness)
        _check_unit("visual_correctness", self.visual_correctness)
        if self.text_accuracy is not None:
            _check_unit("text_accuracy", self.text_accuracy)
        _check_unit("aesthetics", self.aesthetics)


@dataclasses.dataclass(frozen=True)
class TextScore:
    """The text judge's verdict on an answer (gen_prompt + chosen references) against the ground
    truth. `score` is one of 0, 0.25, 0.5, 0.75, 1."""

    score: float
    rationale: str = ""

    def __post_init__(self) -> None:
        _check_unit("score", self.score)


class RewardStatus(str, enum.Enum):
    SCORED = "scored"  # the judges ran; the reward is their blend
    ZERO_BY_RULE = "zero_by_rule"  # the policy's output broke a rule; reward 0, no judge call
    FAILED = "failed"  # the infrastructure failed (generator, judge); leaves the group statistics


class ZeroRule(str, enum.Enum):
    """Why an episode gets reward 0 before any generator or judge call (see `score.zero_rule`)."""

    OVERLONG_OR_REPEATED = "overlong_or_repeated"  # termination max_tokens or repeated
    ERROR = "error"  # termination error
    PARSE_FAILED = "parse_failed"  # an <answer> that did not parse
    NO_ANSWER = "no_answer"  # no answer at all: no_answer, max_rounds, or no Answer record
    EMPTY_GEN_PROMPT = "empty_gen_prompt"  # gen_prompt is empty or only whitespace
    REF_COUNT = "ref_count"  # valid reference images outside [min_refs, max_refs]


@dataclasses.dataclass(frozen=True)
class RewardResult:
    """One episode's reward and how it came about.

    - `scored`: `image_part` is R_img, `text_part` is R_text (None when the text judge is off,
      text_coef = 0), `reward` their blend; `reason` is None.
    - `zero_by_rule`: reward 0, `reason` is the `ZeroRule`'s value; the episode still counts in
      its group's mean and std (a zero here is the policy's doing).
    - `failed`: reward 0 (the reference's value), `reason` says what failed; the trainer leaves
      these out of the group statistics.
    Build them with `score.scored`, `score.zero` and `score.failed`.
    """

    reward: float
    image_part: float | None
    text_part: float | None
    status: RewardStatus
    reason: str | None

    def __post_init__(self) -> None:
        if not isinstance(self.reward, (int, float)) or not math.isfinite(self.reward):
            raise ValueError(f"reward must be a finite number, got {self.reward!r}")
        if self.status is RewardStatus.SCORED:
            if self.reason is not None:
                raise ValueError(f"a scored result has no reason, got {self.reason!r}")
            if self.image_part is None:
                raise ValueError("a scored result needs image_part")
        else:
            if not self.reason:
                raise ValueError(f"a {self.status.value} result needs a reason")
            if self.reward != 0.0 or self.image_part is not None or self.text_part is not None:
                raise ValueError(
                    f"a {self.status.value} result has reward 0 and no parts, got reward="
                    f"{self.reward!r} image_part={self.image_part!r} text_part={self.text_part!r}"
                )

    @property
    def in_group_statistics(self) -> bool:
        """Whether this episode enters its group's mean and std (everything but `failed`)."""
        return self.status is not RewardStatus.FAILED


NO_ANSWER_RULES = ("zero", "fallback")


@dataclasses.dataclass(frozen=True)
class RewardSettings:
    """Reward constants (reference values; reference-spec.md section 4)."""

    text_coef: float = 0.5  # c in R = (1 - c) * R_img + c * R_text (GEN_REWARD_TEXT_COEF)
    # The valid reference-count range, used by the reward rule and everywhere else that checks it
    # (the reference's prompt allows 1-5 but its reward 1-4: we use one setting).
    min_refs: int = 1
    max_refs: int = 4
    generator_refs: int = 3  # how many of the valid references go to the generator (the first ones)
    weight_faithfulness: float = 0.1
    weight_visual: float = 0.4
    weight_text: float = 0.4
    weight_aesthetics: float = 0.1
    text_na_value: float = 0.5  # T used in R_img when the prompt needs no text
    # An episode the reference's rules give 0 (no usable answer: none, overlong, unparsed, no valid
    # reference): "zero" as the reference; "fallback" scores it as evaluation does, the original
    # prompt alone to text-to-image, judged, with text part 0 (an answer with too many references is
    # generated from its first `generator_refs`), so GRPO cannot gain by giving up the fallback that
    # evaluation grants an unanswered item.
    no_answer: str = "zero"

    def __post_init__(self) -> None:
        _check_unit("text_coef", self.text_coef)
        _check_unit("text_na_value", self.text_na_value)
        if self.no_answer not in NO_ANSWER_RULES:
            raise ValueError(f"reward.no_answer must be one of {NO_ANSWER_RULES}, got {self.no_answer!r}")
        if not 0 <= self.min_refs <= self.max_refs:
            raise ValueError(
                f"need 0 <= min_refs <= max_refs, got min_refs={self.min_refs} "
                f"max_refs={self.max_refs}"
            )
        if self.generator_refs < 1:
            raise ValueError(f"generator_refs must be >= 1, got {self.generator_refs}")
        for name in ("weight_faithfulness", "weight_visual", "weight_text", "weight_aesthetics"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0.0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")


# ---------------------------------------------------------------------------------------------
# What a judge client sends: a system prompt and a user message of text and image parts.


@dataclasses.dataclass(frozen=True)
class TextPart:
    text: str


@dataclasses.dataclass(frozen=True)
class ImagePart:
    """An image by local path; the client encodes it (the reference sends JPEG quality 100 with
    the longest side at most 4096 px, as a data URL)."""

    path: str


@dataclasses.dataclass(frozen=True)
class JudgeRequest:
    system: str
    user: tuple[TextPart | ImagePart, ...]
