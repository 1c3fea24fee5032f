"""gsjax.agent.protocol: the system prompt, the messages, and how one assistant turn is read."""

from __future__ import annotations

import datetime
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gsjax.agent.protocol import (
    FINAL_MESSAGE,
    INVALID_FORMAT_MESSAGE,
    TOO_LONG_MESSAGE,
    TOOL_SCHEMAS,
    AgentLimits,
    loads_lenient,
    parse_turn,
    render_answer,
    render_tool_call,
    system_prompt,
    tool_response_text,
)
from gsjax.agent.types import (
    Answer,
    AnswerRef,
    FormatError,
    FormatErrorKind,
    ImageRegistry,
    ToolCall,
)

THINK = "<think>\nI need the emblem of the Harbor Owls.\n</think>\n\n"


@pytest.fixture
def registry() -> ImageRegistry:
    reg = ImageRegistry()
    for i in range(1, 8):
        reg.register(f"/cache/{i}.jpg", url=f"https://img.example/{i}.jpg")
    return reg  # IMG_001 .. IMG_007


def answer_text(
    refs: list[dict], gen_prompt: str = "a banner with the first reference image"
) -> str:
    body = json.dumps({"gen_prompt": gen_prompt, "reference_images": refs})
    return f"{THINK}<answer>\n{body}\n</answer>"


def kind(action) -> FormatErrorKind:
    assert isinstance(action, FormatError), action
    return action.kind


# ---------------------------------------------------------------------------------------------
# Limits, prompt, messages


def test_limits_default_to_the_reference():
    limits = AgentLimits()
    assert (limits.max_rounds, limits.max_tokens_per_turn, limits.max_conversation_tokens) == (
        9,
        4096,
        36000,
    )
    assert (limits.images_per_response, limits.max_pixels, limits.max_answer_refs) == (5, 160000, 5)
    assert limits.max_tool_calls == 8


def test_limits_reject_nonpositive_values():
    with pytest.raises(ValueError, match="max_rounds"):
        AgentLimits(max_rounds=0)


def test_system_prompt_ends_with_todays_date():
    prompt = system_prompt(datetime.date(2026, 3, 7), AgentLimits())
    assert prompt.endswith("2026-03-07")
    assert prompt.rstrip("0123456789-").endswith("Today's date: ")


def test_system_prompt_holds_the_three_schemas_inside_tools_tags():
    prompt = system_prompt(datetime.date(2026, 3, 7))
    inside = re.search(r"<tools>\n(.*)\n</tools>", prompt, re.DOTALL).group(1)
    schemas = [json.loads(line) for line in inside.splitlines()]
    assert schemas == list(TOOL_SCHEMAS)
    names = [s["function"]["name"] for s in schemas]
    assert names == ["search", "image_search", "browse"]
    params = {s["function"]["name"]: s["function"]["parameters"]["properties"] for s in schemas}
    assert params["search"]["queries"]["type"] == "array"
    assert params["search"]["queries"]["items"] == {"type": "string"}
    assert params["image_search"]["query"]["type"] == "string"
    assert params["search"]["top_k"]["type"] == params["image_search"]["top_k"]["type"] == "integer"
    assert set(params["browse"]) == {"url", "query"}


def test_system_prompt_states_the_rules():
    prompt = system_prompt(datetime.date(2026, 3, 7))
    for phrase in (
        "<think></think>",
        "exactly one",
        "at most 8 tool calls",
        "image_search at least once",
        "IMG_001",
        "increasing img_id order",
        "the first reference image",
        "must not contain any image id or URL",
        '"reference_images"',
    ):
        assert phrase in prompt, phrase


def test_system_prompt_follows_the_limits():
    prompt = system_prompt(datetime.date(2026, 3, 7), AgentLimits(max_rounds=4, max_answer_refs=3))
    assert "at most 3 tool calls" in prompt
    assert "at most 3 reference images" in prompt


def test_messages():
    assert FINAL_MESSAGE.startswith("=== FINAL STEP")
    template = re.search(r"<answer>\s*(\{.*\})\s*</answer>", FINAL_MESSAGE, re.DOTALL).group(1)
    assert set(json.loads(template)) == {"gen_prompt", "reference_images"}
    assert INVALID_FORMAT_MESSAGE.startswith(
        "Error: Invalid format. You MUST output exactly one of"
    )
    assert TOO_LONG_MESSAGE.startswith("=== RESPONSE TOO LONG ===")
    assert tool_response_text("result") == "<tool_response>\nresult\n</tool_response>"


# ---------------------------------------------------------------------------------------------
# Tool calls


def test_tool_call_is_parsed(registry):
    text = (
        THINK + "<tool_call>\n"
        '{"name": "image_search", "arguments": {"query": "owl emblem", "top_k": 3}}'
        "\n</tool_call>"
    )
    assert parse_turn(text, registry) == ToolCall(
        "image_search", {"query": "owl emblem", "top_k": 3}
    )


def test_tool_call_body_is_read_leniently(registry):
    body = "{name: 'search', arguments: {queries: ['owls', \"cup\",], top_k: 2,}, // why\n}"
    text = f"<tool_call>{body}</tool_call>"
    assert parse_turn(text, registry) == ToolCall(
        "search", {"queries": ["owls", "cup"], "top_k": 2}
    )


def test_tool_call_wins_over_an_answer(registry):
    text = (
        answer_text([{"img_id": "IMG_001", "note": "n"}])
        + '<tool_call>{"name": "image_search", "arguments": {"query": "q"}}</tool_call>'
    )
    assert parse_turn(text, registry) == ToolCall("image_search", {"query": "q", "top_k": 10})


def test_only_the_first_tool_call_is_used(registry):
    text = (
        '<tool_call>{"name": "image_search", "arguments": {"query": "first"}}</tool_call>\n'
        '<tool_call>{"name": "search", "arguments": {"queries": ["second"]}}</tool_call>'
    )
    assert parse_turn(text, registry) == ToolCall("image_search", {"query": "first", "top_k": 10})


def test_text_after_tool_response_is_ignored(registry):
    text = (
        "<think>hmm</think><tool_response>\nfake\n</tool_response>"
        '<tool_call>{"name": "image_search", "arguments": {"query": "q"}}</tool_call>'
    )
    assert kind(parse_turn(text, registry)) is FormatErrorKind.NO_ACTION


def test_an_unclosed_tool_call_is_no_action(registry):
    text = '<tool_call>{"name": "image_search", "arguments": {"query": "q"}}'
    assert kind(parse_turn(text, registry)) is FormatErrorKind.NO_ACTION


@pytest.mark.parametrize(
    "top_k, expected",
    [(None, 10), (3, 3), (0, 1), (-4, 1), (11, 10), (1000, 10), (2.7, 2), ("4", 4), (" 7 ", 7)],
)
def test_top_k_is_coerced_and_clamped(registry, top_k, expected):
    args = {"query": "owl"} if top_k is None else {"query": "owl", "top_k": top_k}
    text = f"<tool_call>{json.dumps({'name': 'image_search', 'arguments': args})}</tool_call>"
    assert parse_turn(text, registry).arguments["top_k"] == expected


@pytest.mark.parametrize("top_k", ['"many"', "true", "[3]", "NaN", "Infinity"])
def test_top_k_that_is_not_a_number_is_bad_arguments(registry, top_k):
    body = f'{{"name": "search", "arguments": {{"queries": ["a"], "top_k": {top_k}}}}}'
    text = f"<tool_call>{body}</tool_call>"
    action = parse_turn(text, registry)
    assert kind(action) is FormatErrorKind.BAD_ARGUMENTS
    assert "top_k" in action.detail


def test_arguments_are_normalised(registry):
    def call(name, args):
        return parse_turn(render_tool_call(ToolCall(name, args)), registry)

    assert call("search", {"queries": "one query", "extra": 1}) == ToolCall(
        "search", {"queries": ["one query"], "top_k": 10}
    )
    assert call("browse", {"url": "https://a.example", "goal": "who won"}) == ToolCall(
        "browse", {"url": "https://a.example", "query": "who won"}
    )
    urls = [f"https://{i}.example" for i in range(7)]
    assert call("browse", {"url": urls, "query": "q"}).arguments["url"] == urls[:5]


@pytest.mark.parametrize(
    "body, expected_kind, named",
    [
        (
            '{"name": "search", "arguments": {"queries": ["a"]}',
            FormatErrorKind.BAD_TOOL_JSON,
            "JSON",
        ),
        ('["search", {"queries": ["a"]}]', FormatErrorKind.BAD_TOOL_JSON, "object"),
        ('{"arguments": {"queries": ["a"]}}', FormatErrorKind.BAD_TOOL_JSON, '"name"'),
        ('{"name": "search"}', FormatErrorKind.BAD_TOOL_JSON, '"arguments"'),
        (
            '{"name": "search", "arguments": "queries=a"}',
            FormatErrorKind.BAD_TOOL_JSON,
            '"arguments"',
        ),
        ('{"name": "draw", "arguments": {}}', FormatErrorKind.UNKNOWN_TOOL, "'draw'"),
        ('{"name": "search", "arguments": {}}', FormatErrorKind.BAD_ARGUMENTS, '"queries"'),
        (
            '{"name": "search", "arguments": {"queries": []}}',
            FormatErrorKind.BAD_ARGUMENTS,
            '"queries"',
        ),
        (
            '{"name": "search", "arguments": {"queries": [3]}}',
            FormatErrorKind.BAD_ARGUMENTS,
            '"queries"',
        ),
        (
            '{"name": "image_search", "arguments": {"query": ""}}',
            FormatErrorKind.BAD_ARGUMENTS,
            '"query"',
        ),
        ('{"name": "browse", "arguments": {"query": "q"}}', FormatErrorKind.BAD_ARGUMENTS, '"url"'),
        (
            '{"name": "browse", "arguments": {"url": "https://a"}}',
            FormatErrorKind.BAD_ARGUMENTS,
            '"query"',
        ),
    ],
)
def test_tool_call_errors_name_what_is_wrong(registry, body, expected_kind, named):
    action = parse_turn(f"{THINK}<tool_call>{body}</tool_call>", registry)
    assert kind(action) is expected_kind
    assert named in action.detail


# ---------------------------------------------------------------------------------------------
# Answers


def test_answer_is_parsed_with_paths_from_the_registry(registry):
    text = answer_text(
        [{"img_id": "IMG_002", "note": "the owl"}, {"img_id": "IMG_005", "note": "the cup"}]
    )
    assert parse_turn(text, registry) == Answer(
        "a banner with the first reference image",
        (
            AnswerRef("IMG_002", "the owl", "/cache/2.jpg"),
            AnswerRef("IMG_005", "the cup", "/cache/5.jpg"),
        ),
    )


def test_the_reference_regex_reads_nested_objects(registry):
    text = (
        '<answer>{"gen_prompt": "x", "reference_images": [{"img_id": "IMG_001", "note": "n"}]}'
        "</answer>"
    )
    assert parse_turn(text, registry) == Answer("x", (AnswerRef("IMG_001", "n", "/cache/1.jpg"),))


def test_answer_with_no_references_is_valid(registry):
    assert parse_turn(answer_text([]), registry) == Answer(
        "a banner with the first reference image", ()
    )


def test_only_the_first_five_references_are_kept(registry):
    refs = [{"img_id": f"IMG_00{i}", "note": str(i)} for i in range(1, 8)]
    refs[6]["img_id"] = "IMG_999"  # past the fifth: never looked at
    answer = parse_turn(answer_text(refs), registry)
    assert [r.img_id for r in answer.references] == [
        "IMG_001",
        "IMG_002",
        "IMG_003",
        "IMG_004",
        "IMG_005",
    ]


def test_answer_refs_limit_follows_max_refs(registry):
    refs = [{"img_id": f"IMG_00{i}", "note": str(i)} for i in range(1, 5)]
    assert len(parse_turn(answer_text(refs), registry, max_refs=2).references) == 2


def test_unknown_img_id_is_named(registry):
    action = parse_turn(
        answer_text([{"img_id": "IMG_001", "note": "a"}, {"img_id": "IMG_042", "note": "b"}]),
        registry,
    )
    assert kind(action) is FormatErrorKind.UNKNOWN_IMG_ID
    assert "IMG_042" in action.detail


def test_answer_json_is_strict_while_tool_json_is_lenient(registry):
    single_quoted = "<answer>{'gen_prompt': 'x', 'reference_images': []}</answer>"
    assert kind(parse_turn(single_quoted, registry)) is FormatErrorKind.BAD_ANSWER_JSON
    tool = "<tool_call>{'name': 'image_search', 'arguments': {'query': 'x'}}</tool_call>"
    assert parse_turn(tool, registry) == ToolCall("image_search", {"query": "x", "top_k": 10})


@pytest.mark.parametrize(
    "text, named",
    [
        ("<answer>the owl emblem</answer>", "<answer>"),
        ('<answer>{"gen_prompt": "x", "reference_images": []}', "<answer>"),  # never closed
        ('<answer>{"gen_prompt": "x", "reference_images": [],}</answer>', "JSON"),
        ('<answer>{"reference_images": []}</answer>', '"gen_prompt"'),
        ('<answer>{"gen_prompt": 3, "reference_images": []}</answer>', '"gen_prompt"'),
        ('<answer>{"gen_prompt": "x"}</answer>', '"reference_images"'),
        (
            '<answer>{"gen_prompt": "x", "reference_images": {"img_id": "IMG_001"}}</answer>',
            '"reference_images"',
        ),
        (
            '<answer>{"gen_prompt": "x", "reference_images": ["IMG_001"]}</answer>',
            "reference_images[0]",
        ),
        (
            '<answer>{"gen_prompt": "x", "reference_images": [{"img_id": "IMG_001"}]}</answer>',
            '"note"',
        ),
    ],
)
def test_bad_answers_name_what_is_wrong(registry, text, named):
    action = parse_turn(text, registry)
    assert kind(action) is FormatErrorKind.BAD_ANSWER_JSON
    assert named in action.detail


def test_no_action(registry):
    action = parse_turn(THINK + "I think the emblem is a teal owl.", registry)
    assert kind(action) is FormatErrorKind.NO_ACTION


# ---------------------------------------------------------------------------------------------
# The forced final step


def test_final_step_cuts_from_the_tool_call_on(registry):
    text = (
        '<tool_call>{"name": "image_search", "arguments": {"query": "q"}}</tool_call>'
        + answer_text([{"img_id": "IMG_001", "note": "n"}])
    )
    assert isinstance(parse_turn(text, registry), ToolCall)
    assert kind(parse_turn(text, registry, final=True)) is FormatErrorKind.NO_ACTION
    text = (
        answer_text([{"img_id": "IMG_001", "note": "n"}]) + '<tool_call>{"name": "x"}</tool_call>'
    )
    assert parse_turn(text, registry, final=True) == Answer(
        "a banner with the first reference image", (AnswerRef("IMG_001", "n", "/cache/1.jpg"),)
    )


def test_final_step_drops_unknown_and_malformed_references(registry):
    refs = [
        {"img_id": "IMG_042", "note": "a"},
        "IMG_002",
        {"img_id": "IMG_003"},
        {"img_id": "IMG_004", "note": "d"},
    ]
    assert parse_turn(answer_text(refs), registry, final=True) == Answer(
        "a banner with the first reference image",
        (AnswerRef("IMG_003", "", "/cache/3.jpg"), AnswerRef("IMG_004", "d", "/cache/4.jpg")),
    )


def test_final_step_without_a_valid_answer_is_an_error(registry):
    assert kind(parse_turn(THINK + "nothing", registry, final=True)) is FormatErrorKind.NO_ACTION
    bad = "<answer>{'gen_prompt': 'x'}</answer>"
    assert kind(parse_turn(bad, registry, final=True)) is FormatErrorKind.BAD_ANSWER_JSON


# ---------------------------------------------------------------------------------------------
# Rendering


def test_render_answer_round_trips(registry):
    answer = Answer(
        'the first reference image on a flag, "quoted" </answer> <tool_call> }',
        (AnswerRef("IMG_001", "note with } and <tool_response>", "/cache/1.jpg"),),
    )
    text = render_answer(answer)
    assert text.startswith("<answer>{") and text.endswith("}</answer>")
    assert parse_turn(text, registry) == answer


def test_render_tool_call_round_trips(registry):
    call = ToolCall("search", {"queries": ["Glimmer Cup 2031 </tool_call>"], "top_k": 4})
    assert parse_turn(render_tool_call(call), registry) == call


# ---------------------------------------------------------------------------------------------
# The lenient JSON reader


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": [1, 2.5, -3e2, true, false, null]}', {"a": [1, 2.5, -300.0, True, False, None]}),
        ("{a: 'x', $b_1: \"y\",}", {"a": "x", "$b_1": "y"}),
        ("[1, 2, ]", [1, 2]),
        (
            "/* c */ {'k': 0x1F, 'm': .5, 'n': 5., 'p': +1} // end",
            {"k": 31, "m": 0.5, "n": 5.0, "p": 1},
        ),
        (r"'it\'s \u00e9 \x41 \n \ud83d\ude00'", "it's é A \n 😀"),
        ("'line \\\ncontinued'", "line continued"),
    ],
)
def test_loads_lenient_reads_json5(text, expected):
    assert loads_lenient(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "{'a' 1}",
        "[1 2]",
        "{1: 2}",
        "'open",
        "'a\nb'",
        "{} x",
        "nope",
        "/* open",
        "[" * 5000,
    ],
)
def test_loads_lenient_rejects_with_value_error(text):
    with pytest.raises(ValueError):
        loads_lenient(text)


# ---------------------------------------------------------------------------------------------
# Totality: any string is read as exactly one of the three actions, and nothing raises.

FRAGMENTS = [
    "<tool_call>", "</tool_call>", "<answer>", "</answer>", "<tool_response>", "<think>",
    "</think>",
    "{", "}", "[", "]", ",", ":", '"', "'", "\\", "\n", " ", "//", "/*",
    '"name"', '"arguments"', '"search"', '"image_search"', '"browse"', '"queries"', '"query"',
    '"url"', '"top_k"', "10", "-1", "1e999", "NaN", "true", "null", "0x", "\\u", "\\ud83d",
    '"gen_prompt"', '"reference_images"', '"img_id"', '"note"', '"IMG_001"', "IMG_001", '"IMG_999"',
    "é", "日本", "🙂", "\u2028", "\x00",
]  # fmt: skip
TURN_TEXT = st.one_of(
    st.text(),
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=40).map("".join),
)


@settings(max_examples=600, deadline=None)
@given(text=TURN_TEXT, final=st.booleans())
def test_parse_turn_is_total(text, final):
    registry = ImageRegistry()
    registry.register("/cache/1.jpg")
    action = parse_turn(text, registry, final=final)
    assert isinstance(action, (ToolCall, Answer, FormatError))
    if isinstance(action, Answer):
        assert len(action.references) <= 5
        assert all(ref.img_id in registry for ref in action.references)


@settings(max_examples=200, deadline=None)
@given(
    gen_prompt=st.text(),
    notes=st.lists(st.text(), max_size=5),
)
def test_render_answer_round_trips_any_text(gen_prompt, notes):
    registry = ImageRegistry()
    refs = tuple(
        AnswerRef(registry.register(f"/cache/{i}.jpg").img_id, note, f"/cache/{i}.jpg")
        for i, note in enumerate(notes)
    )
    answer = Answer(gen_prompt, refs)
    assert parse_turn(render_answer(answer), registry) == answer


def test_prompt_date_reads_the_configs_date_or_today_and_names_the_key_when_malformed():
    from gsjax.agent.protocol import prompt_date

    assert prompt_date("2026-01-01") == datetime.date(2026, 1, 1)
    assert prompt_date("") == datetime.date.today()
    with pytest.raises(ValueError, match=r"agent.today must be a date as YYYY-MM-DD .* got '01/02/2026'"):
        prompt_date("01/02/2026")
