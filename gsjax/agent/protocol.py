"""The text protocol between the policy and its environment: what the policy is told, and how each
assistant turn is read.

Pure functions and constants, no I/O. The behaviour follows the reference agent (see
`reference-spec.md` section 1); the wording of every prompt and message is our own.

- `system_prompt(today, limits)`: the rules, the tool schemas inside `<tools></tools>`, and today's
  date `YYYY-MM-DD` appended at the very end.
- `parse_turn(text, registry)` turns one assistant turn into a `ToolCall`, an `Answer` or a
  `FormatError`. It is total: any string gives one of the three, nothing raises.
    1. The text is cut at the first `<tool_response>` (the policy must not write observations).
    2. A complete `<tool_call>...</tool_call>` wins over `<answer>`; only the first block counts.
       Its body is read leniently like JSON5 (single quotes, unquoted keys, trailing commas,
       comments, hex numbers) and must be an object with a string "name" and an "arguments" object.
    3. Otherwise, if `<answer>` appears, the first `<answer>\\s*({...})\\s*</answer>` is read with
       strict `json.loads`. Only the first `max_answer_refs` references count; each must name an
       image of the registry.
    4. Otherwise the turn has no action.
  With `final=True` (the forced last call after the rounds ran out) everything from `<tool_call>`
  on is dropped and the answer is read leniently: references that are malformed or name an unknown
  image are dropped instead of failing the answer.
- `render_answer` / `render_tool_call` write actions back as text (for the scripted expert).

Tool arguments after parsing (what the tools receive in `ToolCall.arguments`, nothing else):
    search        {"queries": list[str] (at least one), "top_k": int in [1, 10]}
    image_search  {"query": str, "top_k": int in [1, 10]}
    browse        {"url": str | list[str] (1 to 5), "query": str}
A single string for `queries` is taken as a one-item list; `goal` is accepted for browse's `query`
(as the reference's browse tool does); `top_k` is optional (default 10), read as an integer and
clamped to [1, 10]; other keys are dropped.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
from typing import Any, NoReturn

from gsjax.agent.types import (
    Action,
    Answer,
    AnswerRef,
    FormatError,
    FormatErrorKind,
    ImageRegistry,
    ToolCall,
)


@dataclasses.dataclass(frozen=True)
class AgentLimits:
    """The reference's limits on one episode."""

    max_rounds: int = 9  # model calls before the forced final call (MAX_LLM_CALL_PER_RUN)
    max_tokens_per_turn: int = 4096  # new tokens per model call
    max_conversation_tokens: int = (
        36000  # the rollout is aborted (MAX_TOKENS) past this many tokens
    )
    max_response_tokens: int = 30000  # tokens after the first prompt (the reference's response length)
    images_per_response: int = 5  # images attached to one tool response
    max_pixels: int = 160000  # per image, as the policy sees it (QWEN_VL_MAX_PIXELS)
    max_answer_refs: int = 5  # references beyond the first five are ignored
    # "full": the reference's rules and tool schemas; "compact": the same protocol in five lines,
    # for tiny policies whose whole trajectory must fit in a few hundred tokens (offline world).
    prompt: str = "full"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "prompt":
                if value not in PROMPT_STYLES:
                    raise ValueError(f"AgentLimits.prompt must be one of {PROMPT_STYLES}, got {value!r}")
            elif not isinstance(value, int) or value < 1:
                raise ValueError(f"AgentLimits.{field.name} must be a positive int, got {value!r}")

    @property
    def max_tool_calls(self) -> int:
        """What the prompt allows: every round but the one that answers."""
        return max(1, self.max_rounds - 1)


LIMIT_COUNTS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AgentLimits) if f.name != "prompt")


def override_limits(limits: AgentLimits, over: dict[str, int], key: str) -> AgentLimits:
    """`limits` with each count of `over` that is not 0 in its place (0 keeps the field as it is);
    `key` names the setting in errors."""
    unknown = sorted(set(over) - set(LIMIT_COUNTS))
    if unknown:
        raise ValueError(f"{key}: no such limit {unknown}; the limits are {list(LIMIT_COUNTS)}")
    for name, value in over.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key}.{name} must be a positive int, or 0 to keep the limit as it is, got {value!r}")
    return dataclasses.replace(limits, **{k: v for k, v in over.items() if v})


PROMPT_STYLES = ("full", "compact")
TOOL_NAMES: tuple[str, ...] = ("search", "image_search", "browse")
TOP_K_DEFAULT = 10
TOP_K_MAX = 10
MAX_BROWSE_URLS = 5

_TOP_K_SCHEMA = {
    "type": "integer",
    "description": f"How many results to look at, 1 to {TOP_K_MAX} (default {TOP_K_DEFAULT}).",
}

TOOL_SCHEMAS: tuple[dict[str, Any], ...] = (
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Web search. Runs each query and returns, per query, the top results as "
            "title, link and snippet. Use it to find facts and the pages worth reading.",
            "parameters": {
                "type": "object",
                "properties": {
                    "queries": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "One or more search queries, each a short string.",
                    },
                    "top_k": _TOP_K_SCHEMA,
                },
                "required": ["queries"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "image_search",
            "description": "Image search. Returns a few images for one query, each shown to you "
            "with an id (IMG_###), its title and the page it comes from.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {
                        "type": "string",
                        "description": "What the image should show, e.g. a name plus what it is.",
                    },
                    "top_k": _TOP_K_SCHEMA,
                },
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "browse",
            "description": "Reads a web page and returns what it says about your question.",
            "parameters": {
                "type": "object",
                "properties": {
                    "url": {"type": "string", "description": "The address of the page to read."},
                    "query": {
                        "type": "string",
                        "description": "What you want to learn from this page.",
                    },
                },
                "required": ["url", "query"],
            },
        },
    },
)

_ANSWER_TEMPLATE = (
    '{"gen_prompt": "<the full prompt for the image model>", "reference_images": '
    '[{"img_id": "IMG_001", "note": "<what this image shows and why it is used>"}]}'
)

_SYSTEM_PROMPT = """\
You are a research agent working for an image generator. The user asks for an image that may \
depend on facts, or on how real people, objects, places or events look, that you cannot be sure \
of. Find them with the tools below, then hand the image model one prompt and the reference \
images it needs.

# How to work
- In every round, think first inside <think></think>. Then output exactly one of these two and \
nothing after it: a single <tool_call></tool_call>, or a single <answer></answer>.
- Make at most {max_tool_calls} tool calls in total.
- Call image_search at least once, and once for every subject whose look matters (each person, \
object, building, event or venue).
- Use search to find facts and pages first; browse only pages that a search showed you.
- From each image search keep about one image. Never keep two images of the same person, object, \
event or venue.

# Images
- Every image you are shown has an id such as IMG_001. Refer to images only by these ids, never by \
URL or file path.
- An answer uses at most {max_refs} reference images, listed in increasing img_id order.

# The answer
- gen_prompt describes the whole image to generate on its own. Point at the reference images by \
their position in your list: "the first reference image", "the second reference image", and so on. \
gen_prompt must not contain any image id or URL.
- Each note says what its image shows and what it is used for.
- Write the answer as one JSON object:
<answer>
{answer_template}
</answer>

# Tools
Call a tool with one JSON object:
<tool_call>
{{"name": <tool name>, "arguments": <arguments object>}}
</tool_call>
The tools you can call:
<tools>
{tools}
</tools>

Today's date: """

FINAL_MESSAGE = (
    "=== FINAL STEP ===\n"
    "You have no tool calls left. Do not call any tool. Using only what you have found so far, "
    "write your final answer now, in exactly this format:\n"
    f"<answer>\n{_ANSWER_TEMPLATE}\n</answer>"
)

INVALID_FORMAT_MESSAGE = (
    "Error: Invalid format. You MUST output exactly one of the following after your "
    "<think></think> block:\n"
    '1. one tool call: <tool_call>{"name": ..., "arguments": {...}}</tool_call>\n'
    '2. the final answer: <answer>{"gen_prompt": ..., "reference_images": [...]}</answer>\n'
    "Try again."
)

TOO_LONG_MESSAGE = (
    "=== RESPONSE TOO LONG ===\n"
    "Your last response was cut off before it ended. Think briefly, then output exactly one "
    "<tool_call> or one <answer>."
)


_COMPACT_PROMPT = """\
Use the tools, then answer. Each round: <think>...</think> then one <tool_call>{{"name": ..., \
"arguments": {{...}}}}</tool_call> or <answer>{{"gen_prompt": ..., "reference_images": [{{"img_id": \
..., "note": ...}}]}}</answer>. Tools: search(queries, top_k), image_search(query, top_k), \
browse(url, query). At most {max_tool_calls} tool calls and {max_refs} images.
Today's date: """


def prompt_date(value: str) -> datetime.date:
    """The date a config's `agent.today` puts in the system prompt: YYYY-MM-DD, or "" for today."""
    if not value:
        return datetime.date.today()
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"agent.today must be a date as YYYY-MM-DD (or empty for today), got {value!r}") from None


def system_prompt(today: datetime.date, limits: AgentLimits = AgentLimits()) -> str:
    if limits.prompt == "compact":
        text = _COMPACT_PROMPT.format(max_tool_calls=limits.max_tool_calls, max_refs=limits.max_answer_refs)
        return text + today.strftime("%Y-%m-%d")
    tools = "\n".join(json.dumps(schema, ensure_ascii=False) for schema in TOOL_SCHEMAS)
    text = _SYSTEM_PROMPT.format(
        max_tool_calls=limits.max_tool_calls,
        max_refs=limits.max_answer_refs,
        answer_template=_ANSWER_TEMPLATE,
        tools=tools,
    )
    return text + today.strftime("%Y-%m-%d")


def tool_response_text(text: str) -> str:
    return f"<tool_response>\n{text}\n</tool_response>"


def tool_error_text(error: FormatError) -> str:
    """The observation for a tool call that cannot be run (the reference's `[Tool Error]: ...`)"""
    return f"[Tool Error]: {error.detail}"


TOOL_CALL_ERRORS = frozenset(
    {FormatErrorKind.BAD_TOOL_JSON, FormatErrorKind.UNKNOWN_TOOL, FormatErrorKind.BAD_ARGUMENTS}
)
ANSWER_ERRORS = frozenset({FormatErrorKind.BAD_ANSWER_JSON, FormatErrorKind.UNKNOWN_IMG_ID})


# ---------------------------------------------------------------------------------------------
# Reading a turn.

_ANSWER_RE = re.compile(r"<answer>\s*(\{.*?\})\s*</answer>", re.DOTALL)  # the reference's regex


def cut_turn(text: str) -> str:
    """The assistant turn as the episode keeps it: everything before the first `<tool_response>`."""
    return text.split("<tool_response>", 1)[0]


def parse_turn(
    text: str,
    registry: ImageRegistry,
    *,
    final: bool = False,
    max_refs: int = AgentLimits.max_answer_refs,
) -> Action:
    text = cut_turn(text)
    if final:
        text = text.split("<tool_call>", 1)[0]
        if "<answer>" not in text:
            return FormatError(FormatErrorKind.NO_ACTION, "no <answer> in the final step")
        return _parse_answer(text, registry, max_refs, lenient=True)
    body = _first_tool_call(text)
    if body is not None:
        return _parse_tool_call(body)
    if "<answer>" in text:
        return _parse_answer(text, registry, max_refs, lenient=False)
    return FormatError(
        FormatErrorKind.NO_ACTION, "neither a complete <tool_call>...</tool_call> nor an <answer>"
    )


def _first_tool_call(text: str) -> str | None:
    """The body of the first complete `<tool_call>...</tool_call>`: what the regex
    `<tool_call>(.*?)</tool_call>` finds, in linear time (a turn can hold thousands of `<tool_call>`
    tokens)."""
    start = text.find("<tool_call>")
    if start < 0:
        return None
    start += len("<tool_call>")
    end = text.find("</tool_call>", start)
    return None if end < 0 else text[start:end]


def _parse_tool_call(body: str) -> ToolCall | FormatError:
    try:
        obj = loads_lenient(body)
    except ValueError as e:
        return FormatError(FormatErrorKind.BAD_TOOL_JSON, f"the tool call is not valid JSON: {e}")
    if not isinstance(obj, dict):
        return FormatError(
            FormatErrorKind.BAD_TOOL_JSON,
            f"the tool call must be a JSON object, got {_type_name(obj)}",
        )
    name, arguments = obj.get("name"), obj.get("arguments")
    if not isinstance(name, str):
        return FormatError(
            FormatErrorKind.BAD_TOOL_JSON,
            f'the tool call needs a string "name", got {_type_name(name)}',
        )
    if not isinstance(arguments, dict):
        return FormatError(
            FormatErrorKind.BAD_TOOL_JSON,
            f'the tool call needs an "arguments" object, got {_type_name(arguments)}',
        )
    if name not in TOOL_NAMES:
        return FormatError(
            FormatErrorKind.UNKNOWN_TOOL,
            f"tool {name!r} not found; the tools are {', '.join(TOOL_NAMES)}",
        )
    checked = _check_arguments(name, arguments)
    if isinstance(checked, str):
        return FormatError(FormatErrorKind.BAD_ARGUMENTS, f"{name}: {checked}")
    return ToolCall(name, checked)


def _check_arguments(name: str, args: dict[str, Any]) -> dict[str, Any] | str:
    """The tool's arguments in their one accepted form, or what is wrong with them."""
    out: dict[str, Any] = {}
    if name == "search":
        queries = args.get("queries")
        if isinstance(queries, str):
            queries = [queries]
        if (
            not isinstance(queries, list)
            or not queries
            or not all(isinstance(q, str) and q.strip() for q in queries)
        ):
            return f'"queries" must be a non-empty list of non-empty strings, got {_show(queries)}'
        out["queries"] = queries
    elif name == "image_search":
        query = args.get("query")
        if not isinstance(query, str) or not query.strip():
            return f'"query" must be a non-empty string, got {_show(query)}'
        out["query"] = query
    else:  # browse
        url = args.get("url")
        if isinstance(url, list) and url and all(isinstance(u, str) and u.strip() for u in url):
            url = url[:MAX_BROWSE_URLS]
        elif not isinstance(url, str) or not url.strip():
            return f'"url" must be a non-empty string (or a list of them), got {_show(url)}'
        query = args.get("query", args.get("goal"))
        if not isinstance(query, str) or not query.strip():
            return f'"query" must be a non-empty string, got {_show(query)}'
        out["url"], out["query"] = url, query
        return out
    top_k = _top_k(args.get("top_k"))
    if top_k is None:
        return f'"top_k" must be an integer from 1 to {TOP_K_MAX}, got {_show(args.get("top_k"))}'
    out["top_k"] = top_k
    return out


def _top_k(value: Any) -> int | None:
    if value is None:
        return TOP_K_DEFAULT
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return min(TOP_K_MAX, max(1, int(value)))


def _parse_answer(
    text: str, registry: ImageRegistry, max_refs: int, *, lenient: bool
) -> Answer | FormatError:
    match = _ANSWER_RE.search(text)
    if match is None:
        return FormatError(
            FormatErrorKind.BAD_ANSWER_JSON, "no {...} object between <answer> and </answer>"
        )
    try:
        obj = json.loads(match.group(1))
    except (ValueError, RecursionError) as e:
        return FormatError(FormatErrorKind.BAD_ANSWER_JSON, f"the answer is not valid JSON: {e}")
    if not isinstance(obj, dict):
        return FormatError(
            FormatErrorKind.BAD_ANSWER_JSON,
            f"the answer must be a JSON object, got {_type_name(obj)}",
        )
    gen_prompt, refs = obj.get("gen_prompt"), obj.get("reference_images")
    if not isinstance(gen_prompt, str):
        return FormatError(
            FormatErrorKind.BAD_ANSWER_JSON,
            f'"gen_prompt" must be a string, got {_type_name(gen_prompt)}',
        )
    if not isinstance(refs, list):
        if lenient:
            refs = []
        else:
            return FormatError(
                FormatErrorKind.BAD_ANSWER_JSON,
                f'"reference_images" must be a list, got {_type_name(refs)}',
            )
    kept: list[AnswerRef] = []
    for i, ref in enumerate(refs[:max_refs]):
        img_id = ref.get("img_id") if isinstance(ref, dict) else None
        note = ref.get("note", "" if lenient else None) if isinstance(ref, dict) else None
        if not isinstance(img_id, str) or not isinstance(note, str):
            if lenient:
                continue
            return FormatError(
                FormatErrorKind.BAD_ANSWER_JSON,
                f'reference_images[{i}] must be an object with string "img_id" and "note", '
                f"got {_show(ref)}",
            )
        image = registry.get(img_id)
        if image is None:
            if lenient:
                continue
            known = ", ".join(r.img_id for r in registry.all()) or "none"
            return FormatError(
                FormatErrorKind.UNKNOWN_IMG_ID,
                f"reference_images[{i}] names {img_id!r}, which was never shown (shown: {known})",
            )
        kept.append(AnswerRef(img_id, note, image.path))
    return Answer(gen_prompt, tuple(kept))


def _type_name(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Writing a turn (for the scripted expert's trajectories).


def render_answer(answer: Answer) -> str:
    """`<answer>{json}</answer>` that `parse_turn` reads back as `answer` (paths aside). `<` is
    escaped inside the JSON so that no text in a prompt or note can end or hijack the turn."""
    obj = {
        "gen_prompt": answer.gen_prompt,
        "reference_images": [{"img_id": r.img_id, "note": r.note} for r in answer.references],
    }
    return f"<answer>{_dumps(obj)}</answer>"


def render_tool_call(call: ToolCall) -> str:
    return f"<tool_call>{_dumps({'name': call.name, 'arguments': call.arguments})}</tool_call>"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False).replace("<", "\\u003c")


# ---------------------------------------------------------------------------------------------
# A small JSON5 reader for tool-call bodies (the reference uses the json5 package).

_NUMBER_RE = re.compile(
    r"[+-]?(?:Infinity|NaN|0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
)
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "0": "\0"}
_LINE_BREAKS = "\n\r\u2028\u2029"
_MAX_DEPTH = 200


def loads_lenient(text: str) -> Any:
    """Parse JSON5-style text: JSON plus single-quoted strings, unquoted keys, trailing commas,
    comments, hex numbers, leading/trailing decimal points, +-Infinity and NaN. Raises ValueError
    with the position of the first problem."""
    reader = _Json5(text)
    value = reader.value(0)
    reader.skip()
    if reader.i < len(text):
        reader.fail("extra data after the value")
    return value


class _Json5:
    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def fail(self, what: str) -> NoReturn:
        raise ValueError(f"{what} at char {self.i}")

    def skip(self) -> None:
        s, n = self.s, len(self.s)
        while self.i < n:
            c = s[self.i]
            if c.isspace() or c == "\ufeff":
                self.i += 1
            elif s.startswith("//", self.i):
                while self.i < n and s[self.i] not in _LINE_BREAKS:
                    self.i += 1
            elif s.startswith("/*", self.i):
                end = s.find("*/", self.i + 2)
                if end < 0:
                    self.fail("unterminated comment")
                self.i = end + 2
            else:
                return

    def value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            self.fail(f"nesting deeper than {_MAX_DEPTH}")
        self.skip()
        if self.i >= len(self.s):
            self.fail("expected a value, found the end")
        c = self.s[self.i]
        if c == "{":
            return self.container(depth, "}")
        if c == "[":
            return self.container(depth, "]")
        if c in "\"'":
            return self.string()
        match = _NUMBER_RE.match(self.s, self.i)
        if match is not None:
            self.i = match.end()
            return _number(match.group())
        word = self.identifier()
        if word == "true":
            return True
        if word == "false":
            return False
        if word == "null":
            return None
        self.i -= len(word)
        self.fail("expected a value")

    def container(self, depth: int, close: str) -> dict[str, Any] | list[Any]:
        self.i += 1  # the opening bracket
        out: dict[str, Any] | list[Any] = {} if close == "}" else []
        while True:
            self.skip()
            if self.s.startswith(close, self.i):
                self.i += 1
                return out
            if isinstance(out, dict):
                key = self.key()
                self.skip()
                if not self.s.startswith(":", self.i):
                    self.fail("expected ':' after a key")
                self.i += 1
                out[key] = self.value(depth + 1)
            else:
                out.append(self.value(depth + 1))
            self.skip()
            if self.s.startswith(",", self.i):
                self.i += 1
            elif not self.s.startswith(close, self.i):
                self.fail(f"expected ',' or '{close}'")

    def key(self) -> str:
        if self.i < len(self.s) and self.s[self.i] in "\"'":
            return self.string()
        word = self.identifier()
        if not word or word[0].isdigit():
            self.fail("expected a key")
        return word

    def identifier(self) -> str:
        start = self.i
        while self.i < len(self.s) and (self.s[self.i].isalnum() or self.s[self.i] in "_$"):
            self.i += 1
        return self.s[start : self.i]

    def string(self) -> str:
        s, n = self.s, len(self.s)
        quote = s[self.i]
        self.i += 1
        parts: list[str] = []
        while True:
            if self.i >= n:
                self.fail("unterminated string")
            c = s[self.i]
            if c == quote:
                self.i += 1
                return _join_surrogates("".join(parts))
            if c in "\n\r":
                self.fail("line break inside a string")
            if c != "\\":
                parts.append(c)
                self.i += 1
                continue
            self.i += 1  # the backslash
            if self.i >= n:
                self.fail("unterminated string")
            e = s[self.i]
            self.i += 1
            if e in _LINE_BREAKS:  # a line continuation
                if e == "\r" and s.startswith("\n", self.i):
                    self.i += 1
            elif e in _ESCAPES:
                parts.append(_ESCAPES[e])
            elif e in "xu":
                width = 2 if e == "x" else 4
                digits = s[self.i : self.i + width]
                if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                    self.fail(f"bad \\{e} escape")
                self.i += width
                parts.append(chr(int(digits, 16)))
            else:
                parts.append(e)


_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _join_surrogates(text: str) -> str:
    """Join surrogate pairs written as two \\u escapes, as JSON does; lone ones stay as they are."""
    return _SURROGATE_PAIR_RE.sub(
        lambda m: m.group().encode("utf-16-le", "surrogatepass").decode("utf-16-le"), text
    )


def _number(token: str) -> int | float:
    sign = -1 if token.startswith("-") else 1
    body = token.lstrip("+-")
    if body == "Infinity":
        return sign * math.inf
    if body == "NaN":
        return math.nan
    try:
        if body[:2] in ("0x", "0X"):
            return sign * int(body, 16)
        if any(c in body for c in ".eE"):
            return sign * float(body)
        return sign * int(body)
    except ValueError as e:  # e.g. an integer longer than Python's digit limit
        raise ValueError(f"bad number {token[:40]!r}") from e
