"""gsjax.rewards.judge_parse: reading the image and text judges' replies (reference-spec.md
sections 4 and 10). Parsing is total: a reply gives scores or a failure reason, never an
exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gsjax.agent.types import Answer, AnswerRef, ImageRef
from gsjax.rewards.judge_parse import (
    json_object,
    parse_image_judge,
    parse_text_judge,
    snap_text_score,
)
from gsjax.rewards.rubrics import answer_text, image_judge_request, text_judge_request
from gsjax.rewards.types import ImagePart, JudgeScores, TextPart, TextScore

GOOD = {
    "rationale": "Constraints: a red owl emblem on a banner.",
    "faithfulness": 1,
    "visual_correctness": 0.5,
    "text_accuracy": 0,
    "aesthetics": 0.5,
    "text_accuracy_na": False,
}
GOOD_SCORES = JudgeScores(1.0, 0.5, 0.0, 0.5, "Constraints: a red owl emblem on a banner.")


def reply(**changes) -> str:
    obj = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj)


def image_scores(text: str) -> JudgeScores:
    result = parse_image_judge(text)
    assert isinstance(result, JudgeScores), result
    return result


# ---------------------------------------------------------------------------------------------
# Finding the JSON object


def test_plain_json_reply():
    assert parse_image_judge(json.dumps(GOOD)) == GOOD_SCORES


@pytest.mark.parametrize(
    "text",
    [
        "```json\n" + json.dumps(GOOD) + "\n```",
        "```\n" + json.dumps(GOOD, indent=2) + "\n```",
        "  ```JSON" + json.dumps(GOOD) + "```  ",
    ],
)
def test_fenced_json_is_parsed(text):
    assert parse_image_judge(text) == GOOD_SCORES


def test_prose_around_the_json_is_ignored():
    text = "Here is my evaluation:\n" + json.dumps(GOOD) + "\nHope this helps."
    assert parse_image_judge(text) == GOOD_SCORES
    fenced_in_prose = "Evaluation below.\n```json\n" + json.dumps(GOOD) + "\n```\nDone."
    assert parse_image_judge(fenced_in_prose) == GOOD_SCORES


def test_trailing_commas_are_repaired():
    text = (
        '{"rationale": "ok", "faithfulness": 1, "visual_correctness": 0.5,'
        ' "text_accuracy": 0, "aesthetics": 0.5, "text_accuracy_na": false,\n}'
    )
    assert parse_image_judge(text) == JudgeScores(1.0, 0.5, 0.0, 0.5, "ok")
    assert json_object('{"a": [1, 2, ], "b": {"c": 3,},}') == {"a": [1, 2], "b": {"c": 3}}


def test_trailing_comma_repair_leaves_strings_alone():
    assert json_object('{"rationale": "a, } and , ]", "x": 1,}') == {
        "rationale": "a, } and , ]",
        "x": 1,
    }


def test_braces_in_prose_before_the_json_do_not_hide_it():
    text = "Scores follow {see rubric}: " + json.dumps(GOOD)
    assert parse_image_judge(text) == GOOD_SCORES


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("I cannot evaluate these images.", "no JSON object"),
        ("[1, 2, 3]", "no JSON object"),
        ('{"faithfulness": 1, "visual_correctness": ', "no JSON object"),
        ("{" + "[" * 100_000, "no JSON object"),  # deep nesting must not escape as RecursionError
    ],
)
def test_a_reply_without_a_json_object_is_a_failure_reason(text, reason):
    result = parse_image_judge(text)
    assert isinstance(result, str) and reason in result
    text_result = parse_text_judge(text)
    assert isinstance(text_result, str) and reason in text_result


def test_a_reply_that_is_not_text_is_a_failure_reason():
    assert parse_image_judge(None) == "judge reply is not text: NoneType"


# ---------------------------------------------------------------------------------------------
# Image judge: text applicability


@pytest.mark.parametrize("na", [True, "true", "True", 1])
def test_text_accuracy_na_variants_make_text_not_applicable(na):
    assert image_scores(reply(text_accuracy_na=na, text_accuracy=1)).text_accuracy is None


@pytest.mark.parametrize("na", [False, "false", 0, "yes", "TRUE", None])
def test_other_text_accuracy_na_values_keep_the_text_score(na):
    assert image_scores(reply(text_accuracy_na=na, text_accuracy=1)).text_accuracy == 1.0


@pytest.mark.parametrize("value", [None, "n/a", "N/A", "", [1], {"score": 1}, float("nan")])
def test_null_or_non_numeric_text_accuracy_is_not_applicable(value):
    assert image_scores(reply(text_accuracy=value)).text_accuracy is None


def test_missing_text_accuracy_scores_0_not_not_applicable():
    assert image_scores(reply(text_accuracy=...)).text_accuracy == 0.0
    # ... unless text_accuracy_na says so
    assert image_scores(reply(text_accuracy=..., text_accuracy_na=True)).text_accuracy is None


def test_missing_text_accuracy_na_is_applicable():
    assert image_scores(reply(text_accuracy_na=..., text_accuracy=0.5)).text_accuracy == 0.5


# ---------------------------------------------------------------------------------------------
# Image judge: numbers


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1.7, 1.0),
        (-0.2, 0.0),
        (0.5, 0.5),
        (7, 1.0),
        (10**400, 1.0),  # an integer too large for a float is still just clipped
        (0.555, 0.56),  # Python round of the float 0.55500000000000004885
        (0.125, 0.12),  # an exact tie rounds to even, not up
        (0.3333, 0.33),
        ("0.5", 0.5),  # a numeric string reads as its number, as float() does
        (True, 1.0),
    ],
)
def test_scores_are_clipped_to_0_1_and_rounded_to_2_decimals(raw, expected):
    scores = image_scores(
        reply(faithfulness=raw, visual_correctness=raw, text_accuracy=raw, aesthetics=raw)
    )
    assert (
        scores.faithfulness,
        scores.visual_correctness,
        scores.text_accuracy,
        scores.aesthetics,
    ) == (expected, expected, expected, expected)


def test_infinities_clip():
    body = '{"faithfulness": Infinity, "visual_correctness": -Infinity, "aesthetics": 1}'
    scores = image_scores(body)
    assert (scores.faithfulness, scores.visual_correctness) == (1.0, 0.0)


@pytest.mark.parametrize("key", ["faithfulness", "visual_correctness", "aesthetics"])
def test_missing_f_v_or_a_is_a_failure_not_a_zero(key):
    assert parse_image_judge(reply(**{key: ...})) == f"judge reply has no {key!r} score"


@pytest.mark.parametrize("value", ["high", None, [0.5], float("nan")])
def test_non_numeric_f_v_or_a_is_a_failure(value):
    result = parse_image_judge(reply(aesthetics=value))
    assert isinstance(result, str) and "'aesthetics' is not a number" in result


def test_rationale_is_kept_and_defaults_to_empty():
    assert image_scores(reply(rationale="Constraints: x. " * 200)).rationale == (
        "Constraints: x. " * 200
    )
    assert image_scores(reply(rationale=...)).rationale == ""
    assert image_scores(reply(rationale=None)).rationale == ""


# ---------------------------------------------------------------------------------------------
# Text judge


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0, 0.0),
        (0.25, 0.25),
        (1, 1.0),
        (0.1, 0.0),
        (0.2, 0.25),
        (0.7, 0.75),
        (0.9, 1.0),
        (0.125, 0.0),  # ties go to the lower level
        (0.375, 0.25),
        (0.625, 0.5),
        (0.875, 0.75),
        (1.7, 1.0),
        (-0.3, 0.0),
        ("0.75", 0.75),
    ],
)
def test_text_score_snaps_to_quarters_with_ties_down(raw, expected):
    body = json.dumps({"rationale": "r", "score": raw})
    assert parse_text_judge(body) == TextScore(expected, "r")
    assert snap_text_score(raw) == expected


@pytest.mark.parametrize(
    "body",
    [
        '{"rationale": "r", "score": NaN}',
        '{"rationale": "r", "score": "high"}',
        '{"rationale": "r", "score": null}',
        '{"rationale": "r", "score": [1]}',
        '{"rationale": "r", "score": Infinity}',
        '{"rationale": "r"}',
    ],
)
def test_nan_missing_or_non_numeric_text_score_is_0(body):
    assert parse_text_judge(body) == TextScore(0.0, "r")


def test_text_judge_reply_in_fences_with_trailing_comma():
    assert parse_text_judge('```json\n{"rationale": "ok", "score": 0.75,}\n```') == TextScore(
        0.75, "ok"
    )


# ---------------------------------------------------------------------------------------------
# Totality


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text):
    image = parse_image_judge(text)
    assert isinstance(image, (JudgeScores, str))
    assert isinstance(parse_text_judge(text), (TextScore, str))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            key: json_values
            for key in (
                "rationale",
                "faithfulness",
                "visual_correctness",
                "text_accuracy",
                "aesthetics",
                "text_accuracy_na",
                "score",
            )
        },
    ),
    st.sampled_from(["{}", "```json\n{}\n```", "Verdict: {} done", "{},"]),
)
def test_arbitrary_json_objects_give_valid_records_or_reasons(obj, wrapper):
    text = wrapper.replace("{}", json.dumps(obj))
    image = parse_image_judge(text)
    if isinstance(image, JudgeScores):  # its own checks hold: every score in [0, 1]
        assert all(k in obj for k in ("faithfulness", "visual_correctness", "aesthetics"))
    else:
        assert isinstance(image, str) and image
    text_score = parse_text_judge(text)
    assert isinstance(text_score, TextScore)
    assert text_score.score in (0.0, 0.25, 0.5, 0.75, 1.0)


# ---------------------------------------------------------------------------------------------
# Rubrics: what the judges are sent


def test_image_judge_request_sends_the_original_question_then_generated_then_gt():
    question = "The Harbor Owls' emblem on a banner"
    request = image_judge_request("42", question, "/gen.png", "/gt.png")
    text, first, second = request.user
    assert isinstance(text, TextPart)
    assert "42" in text.text and question in text.text
    assert "Image 1: the generated image" in text.text
    assert (first, second) == (ImagePart("/gen.png"), ImagePart("/gt.png"))
    keys = ("rationale", "faithfulness", "visual_correctness", "text_accuracy", "aesthetics")
    for key in (*keys, "text_accuracy_na"):
        assert f'"{key}"' in request.system


def test_text_judge_request_sends_the_answer_text_and_only_the_gt_image():
    answer = Answer(
        'The emblem of the first reference image on a "banner"',
        (AnswerRef("IMG_002", "the owl emblem", "/cache/2.jpg"), AnswerRef("IMG_009", "x")),
    )
    images = [ImageRef("IMG_002", "/cache/2.jpg", "https://i/2.jpg", "Owls crest", "https://p/2")]
    request = text_judge_request("42", "The Harbor Owls' emblem", "/gt.png", answer, images)
    text, gt = request.user
    assert gt == ImagePart("/gt.png")
    assert answer_text(answer, images) in text.text
    assert '"score"' in request.system and '"rationale"' in request.system
    assert "/cache/2.jpg" not in text.text  # no reference pixels or paths


def test_answer_text_lists_gen_prompt_and_refs_with_title_note_page_url():
    answer = Answer("a banner", (AnswerRef("IMG_002", "owl", "/c/2.jpg"),))
    images = [ImageRef("IMG_002", "/c/2.jpg", "u", "Owls crest", "https://p/2")]
    assert answer_text(answer, images) == (
        '"gen_prompt": "a banner"\n'
        '"reference_images": [\n'
        "  {\n"
        '    "img_id": "IMG_002",\n'
        '    "title": "Owls crest",\n'
        '    "note": "owl",\n'
        '    "page_url": "https://p/2"\n'
        "  }\n"
        "]"
    )
    assert answer_text(Answer("a banner", ())) == '"gen_prompt": "a banner"'
