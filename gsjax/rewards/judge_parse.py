"""Reading judge replies. Total: never raises; returns the scores, or a string saying why the
reply could not be read (a judge failure, which the client may retry; distinct from a score of 0).

Semantics follow the reference (reference-spec.md sections 4 and 10):
- the JSON object is found in replies wrapped in ``` fences or surrounded by prose, and a
  trailing comma before } or ] is repaired;
- image judge: each score clipped to [0, 1] and rounded to 2 decimals with Python's `round`;
  text is not applicable when `text_accuracy_na` is True, "true", "True" or 1, or when
  `text_accuracy` is null or not a number; a reply with no `text_accuracy` key scores T = 0;
- text judge: the score snaps to the nearest of 0, 0.25, 0.5, 0.75, 1, ties to the lower one;
  a missing, NaN or non-numeric score gives 0.

Where the reference leaves room, or where we choose differently (reference behaviour in brackets):
- a reply without `faithfulness`, `visual_correctness` or `aesthetics` is a failure
  [scored 0 through `.get(key, 0)`]: the rubric demands those keys, so their absence says the
  reply is malformed, not that the image is bad; non-numeric values there are failures as in the
  reference (its float() raises and the call is retried);
- NaN is not a number here: NaN F/V/A is a failure, NaN T is not applicable [NaN clips to 1.0];
- an integer too large for a float is clipped like any other number [float() overflows];
- when the whole reply is not valid JSON, the first JSON object in it is used [judge failure];
- trailing commas are removed only outside strings [also inside the rationale's text];
- the rationale is kept whole [cut to 1000 characters].
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from gsjax.rewards.types import JudgeScores, TextScore

TEXT_SCORE_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
IMAGE_SCORE_KEYS = ("faithfulness", "visual_correctness", "aesthetics")

_FENCE_OPEN_RE = re.compile(r"^```[A-Za-z0-9]*\s*")
_FENCE_CLOSE_RE = re.compile(r"\s*```$")
_MAX_OBJECT_STARTS = 64  # how many '{' the fallback scan tries before giving up
_DECODER = json.JSONDecoder()


def parse_image_judge(reply: object) -> JudgeScores | str:
    """The image judge's reply -> `JudgeScores`, or the reason it could not be read."""
    obj = json_object(reply)
    if isinstance(obj, str):
        return obj
    scores: dict[str, float] = {}
    for key in IMAGE_SCORE_KEYS:
        if key not in obj:
            return f"judge reply has no {key!r} score"
        value = _unit_score(obj[key])
        if value is None:
            return f"judge reply's {key!r} is not a number: {_show(obj[key])}"
        scores[key] = value
    text: float | None
    if obj.get("text_accuracy_na") in (True, "true", "True", 1):
        text = None
    else:
        text = _unit_score(obj.get("text_accuracy", 0))  # None (not a number) -> not applicable
    return JudgeScores(
        faithfulness=scores["faithfulness"],
        visual_correctness=scores["visual_correctness"],
        text_accuracy=text,
        aesthetics=scores["aesthetics"],
        rationale=_rationale(obj),
    )


def parse_text_judge(reply: object) -> TextScore | str:
    """The text judge's reply -> `TextScore`, or the reason it could not be read. Only a reply
    with no JSON object fails; a bad score inside one is 0."""
    obj = json_object(reply)
    if isinstance(obj, str):
        return obj
    return TextScore(snap_text_score(obj.get("score", 0)), _rationale(obj))


def snap_text_score(value: object) -> float:
    """The nearest of 0, 0.25, 0.5, 0.75, 1 (ties to the lower); anything that is not a finite
    number (NaN, inf, "high", null) gives 0."""
    x = _number(value)
    if x is None or not math.isfinite(x):
        return 0.0
    best = TEXT_SCORE_LEVELS[0]
    for level in TEXT_SCORE_LEVELS[1:]:
        if abs(x - level) < abs(x - best):  # strictly closer: a tie keeps the lower level
            best = level
    return best


def json_object(reply: object) -> dict[str, Any] | str:
    """The JSON object in a judge's reply, or the reason there is none.

    Tried in order: the text from the first '{' to the last '}' (after removing a ``` fence);
    the same with trailing commas removed; the first '{' from which a whole JSON object decodes.
    """
    if not isinstance(reply, str):
        return f"judge reply is not text: {type(reply).__name__}"
    text = reply.strip()
    if not text:
        return "judge reply is empty"
    if text.startswith("```"):
        text = _FENCE_CLOSE_RE.sub("", _FENCE_OPEN_RE.sub("", text, count=1), count=1).strip()
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        text = text[start : end + 1]
    for candidate in (text, _drop_trailing_commas(text)):
        value = _loads(candidate)
        if isinstance(value, dict):
            return value
    value = _first_object(text)
    if value is not None:
        return value
    return f"no JSON object in the judge reply: {_show(reply)}"


# ---------------------------------------------------------------------------------------------


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; deep nesting recurses
        return None


def _first_object(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    for _ in range(_MAX_OBJECT_STARTS):
        if start == -1:
            return None
        for candidate in (text[start:], _drop_trailing_commas(text[start:])):
            try:
                value, _end = _DECODER.raw_decode(candidate)
            except (ValueError, RecursionError):
                continue
            if isinstance(value, dict):
                return value
        start = text.find("{", start + 1)
    return None


def _drop_trailing_commas(text: str) -> str:
    """Remove each ',' that is followed (after whitespace) by '}' or ']', outside strings."""
    out: list[str] = []
    in_string = escaped = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j < n and text[j] in "}]":
                i += 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


def _number(value: object) -> float | None:
    """A JSON value as a float the way Python's float() reads it (numbers, booleans, numeric
    strings), or None. Integers are clipped to [0, 1] first so huge ones cannot overflow."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int):
        return float(min(max(value, 0), 1))
    if isinstance(value, (float, str)):
        try:
            x = float(value)
        except ValueError:
            return None
        return None if math.isnan(x) else x
    return None


def _unit_score(value: object) -> float | None:
    """Clip to [0, 1] and round to 2 decimals; None when not a number."""
    x = _number(value)
    if x is None:
        return None
    return round(min(max(x, 0.0), 1.0), 2)


def _rationale(obj: dict[str, Any]) -> str:
    value = obj.get("rationale", "")
    return "" if value is None else str(value)


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
