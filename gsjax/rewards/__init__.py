"""Rewards: turn an episode's answer into a number.

`score` holds the arithmetic and the zero-reward rules, `judge_parse` reads judge replies,
`rubrics` builds what the judges are asked, `types` holds the records that cross these seams.
Judge clients and generator backends sit beside them and do the I/O.
"""

from gsjax.rewards.judge_parse import (
    TEXT_SCORE_LEVELS,
    json_object,
    parse_image_judge,
    parse_text_judge,
    snap_text_score,
)
from gsjax.rewards.rubrics import (
    IMAGE_JUDGE_SYSTEM_PROMPT,
    TEXT_JUDGE_SYSTEM_PROMPT,
    answer_text,
    image_judge_request,
    text_judge_request,
)
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
    ImagePart,
    JudgeRequest,
    JudgeScores,
    RewardResult,
    RewardSettings,
    RewardStatus,
    TextPart,
    TextScore,
    ZeroRule,
)

__all__ = [
    "IMAGE_JUDGE_SYSTEM_PROMPT",
    "TEXT_JUDGE_SYSTEM_PROMPT",
    "TEXT_SCORE_LEVELS",
    "ImagePart",
    "JudgeRequest",
    "JudgeScores",
    "RewardResult",
    "RewardSettings",
    "RewardStatus",
    "TextPart",
    "TextScore",
    "ZeroRule",
    "answer_text",
    "combine",
    "failed",
    "image_judge_request",
    "image_reward",
    "json_object",
    "parse_image_judge",
    "parse_text_judge",
    "refs_for_generator",
    "scored",
    "snap_text_score",
    "text_judge_request",
    "zero",
    "zero_rule",
]
