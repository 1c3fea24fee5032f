"""gsjax.agent.episode: one episode's rounds, driven by scripted model outputs."""

from __future__ import annotations

import datetime
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gsjax.agent.episode import Continue, Done, Episode, RunTool
from gsjax.agent.protocol import (
    FINAL_MESSAGE,
    INVALID_FORMAT_MESSAGE,
    TOO_LONG_MESSAGE,
    AgentLimits,
    system_prompt,
)
from gsjax.agent.types import (
    Answer,
    AnswerRef,
    FormatErrorKind,
    Termination,
    ToolCall,
    ToolResult,
)

TODAY = datetime.date(2026, 3, 7)
TASK = "Draw the emblem of the club that won the 2031 Glimmer Cup, on a banner."


def tool_call(name: str, **arguments) -> str:
    body = json.dumps({"name": name, "arguments": arguments})
    return f"<think>\nI need to look this up.\n</think>\n\n<tool_call>\n{body}\n</tool_call>"


def answer(*img_ids: str, gen_prompt: str = "the first reference image on a banner") -> str:
    refs = [{"img_id": i, "note": f"note {i}"} for i in img_ids]
    body = json.dumps({"gen_prompt": gen_prompt, "reference_images": refs})
    return f"<think>\nI have what I need.\n</think>\n\n<answer>\n{body}\n</answer>"


def image_search(ep: Episode, query: str, n: int) -> ToolResult:
    """What an image_search tool does: register each image in the episode's registry, render ids."""
    images = [
        ep.registry.register(f"/cache/{query}-{i}.jpg", url=f"https://img.example/{query}/{i}.jpg")
        for i in range(n)
    ]
    lines = [f"--- image search result for [{query}] ---"]
    lines += [f"{img.img_id}: title: {query} {i}" for i, img in enumerate(images)]
    lines += ["--- end of image search result ---"]
    return ToolResult("\n".join(lines), images)


def search_result(text: str = "The Harbor Owls won the 2031 Glimmer Cup.") -> ToolResult:
    return ToolResult(text)


def run_rounds(ep: Episode, n: int) -> None:
    """n rounds, each a distinct search."""
    for i in range(n):
        step = ep.on_assistant(tool_call("search", queries=[f"query {i}"]))
        assert isinstance(step, RunTool)
        ep.on_tool_result(search_result(f"result {i}"))


def test_an_episode_starts_with_system_and_task():
    ep = Episode(TASK, TODAY)
    assert ep.messages == [
        {"role": "system", "content": system_prompt(TODAY, AgentLimits())},
        {"role": "user", "content": TASK},
    ]
    assert not ep.done and ep.rounds == 0 and ep.termination is None and ep.answer is None


def test_search_then_image_search_then_answer():
    ep = Episode(TASK, TODAY)
    step = ep.on_assistant(tool_call("search", queries=["2031 Glimmer Cup winner"]))
    assert step == RunTool(
        ToolCall("search", {"queries": ["2031 Glimmer Cup winner"], "top_k": 10})
    )
    ep.on_tool_result(search_result())
    assert ep.messages[-1] == {
        "role": "user",
        "content": "<tool_response>\nThe Harbor Owls won the 2031 Glimmer Cup.\n</tool_response>",
    }

    step = ep.on_assistant(tool_call("image_search", query="Harbor Owls emblem", top_k=3))
    assert step == RunTool(ToolCall("image_search", {"query": "Harbor Owls emblem", "top_k": 3}))
    ep.on_tool_result(image_search(ep, "owls", 2))
    assert ep.messages[-1]["images"] == ["/cache/owls-0.jpg", "/cache/owls-1.jpg"]

    step = ep.on_assistant(answer("IMG_002"))
    expected = Answer(
        "the first reference image on a banner",
        (AnswerRef("IMG_002", "note IMG_002", "/cache/owls-1.jpg"),),
    )
    assert step == Done(Termination.ANSWER, expected)
    assert (ep.termination, ep.answer, ep.rounds, ep.done) == (
        Termination.ANSWER,
        expected,
        3,
        True,
    )
    assert [m["role"] for m in ep.messages] == [
        "system", "user", "assistant", "user", "assistant", "user", "assistant"
    ]  # fmt: skip
    assert ep.messages[-1]["content"] == answer("IMG_002")
    assert ep.format_errors == []


def test_tool_response_attaches_at_most_five_images():
    ep = Episode(TASK, TODAY)
    ep.on_assistant(tool_call("image_search", query="owls"))
    result = image_search(ep, "owls", 8)
    ep.on_tool_result(result)
    message = ep.messages[-1]
    assert message["content"] == f"<tool_response>\n{result.text}\n</tool_response>"
    assert message["images"] == [f"/cache/owls-{i}.jpg" for i in range(5)]
    assert ep.turns[-1].result is result


def test_a_tool_response_without_images_has_no_images_key():
    ep = Episode(TASK, TODAY)
    ep.on_assistant(tool_call("search", queries=["x"]))
    ep.on_tool_result(search_result())
    assert "images" not in ep.messages[-1]


def test_image_ids_persist_across_image_searches():
    ep = Episode(TASK, TODAY)
    ep.on_assistant(tool_call("image_search", query="owls"))
    first = image_search(ep, "owls", 2)
    ep.on_tool_result(first)
    ep.on_assistant(tool_call("image_search", query="cup"))
    second = image_search(ep, "cup", 2)
    ep.on_tool_result(second)
    assert [i.img_id for i in first.images + second.images] == [
        "IMG_001",
        "IMG_002",
        "IMG_003",
        "IMG_004",
    ]
    again = ep.registry.register("/cache/owls-1.jpg")  # the same image shown again keeps its id
    assert again.img_id == "IMG_002"
    done = ep.on_assistant(answer("IMG_002", "IMG_004"))
    assert [r.path for r in done.answer.references] == ["/cache/owls-1.jpg", "/cache/cup-1.jpg"]


def test_the_turn_is_cut_at_tool_response():
    ep = Episode(TASK, TODAY)
    call = tool_call("search", queries=["x"])
    step = ep.on_assistant(call + "\n<tool_response>\nI made this up\n</tool_response>")
    assert isinstance(step, RunTool)
    assert ep.messages[-1] == {"role": "assistant", "content": call + "\n"}


def test_no_action_gets_the_invalid_format_message():
    ep = Episode(TASK, TODAY)
    step = ep.on_assistant("<think>hmm</think> The emblem is a teal owl.")
    assert step == Continue("invalid_format")
    assert ep.messages[-1] == {"role": "user", "content": INVALID_FORMAT_MESSAGE}
    assert [e.kind for e in ep.format_errors] == [FormatErrorKind.NO_ACTION]
    assert ep.rounds == 1 and not ep.done


@pytest.mark.parametrize(
    "turn, detail",
    [
        ('<tool_call>{"name": "draw", "arguments": {}}</tool_call>', "'draw' not found"),
        ('<tool_call>{"name": "search", "arguments": {}}</tool_call>', '"queries"'),
        ('<tool_call>{"name": "search" "arguments": {}}</tool_call>', "not valid JSON"),
    ],
)
def test_a_tool_call_that_cannot_run_gets_a_tool_error_response(turn, detail):
    ep = Episode(TASK, TODAY)
    step = ep.on_assistant(turn)
    assert step == Continue("tool_error")
    content = ep.messages[-1]["content"]
    assert content.startswith("<tool_response>\n[Tool Error]: ") and content.endswith(
        "\n</tool_response>"
    )
    assert detail in content
    assert ep.rounds == 1 and not ep.done


def test_repeated_identical_turns_end_the_episode():
    ep = Episode(TASK, TODAY)
    turn = tool_call("search", queries=["Glimmer Cup"])
    ep.on_assistant(turn)
    ep.on_tool_result(search_result())
    assert ep.on_assistant(turn) == Done(Termination.REPEATED)
    assert ep.termination is Termination.REPEATED and ep.answer is None
    assert ep.messages[-1] == {"role": "assistant", "content": turn}


def test_repetition_is_judged_after_the_cut():
    ep = Episode(TASK, TODAY)
    ep.on_assistant("no action <tool_response>one")
    assert ep.on_assistant("no action <tool_response>two") == Done(Termination.REPEATED)


def test_two_too_long_rounds_in_a_row_end_as_repeated():
    ep = Episode(TASK, TODAY)
    assert ep.on_assistant("<think>" + "very long " * 5, "length") == Continue("too_long")
    assert ep.messages[-1] == {"role": "user", "content": TOO_LONG_MESSAGE}
    assert ep.on_assistant("<think>" + "still long " * 5, "length") == Done(Termination.REPEATED)


def test_too_long_rounds_separated_by_another_round_do_not_end_it():
    ep = Episode(TASK, TODAY)
    assert ep.on_assistant("<think>long one", "length") == Continue("too_long")
    assert ep.on_assistant("<think>short</think> no action") == Continue("invalid_format")
    assert ep.on_assistant("<think>long two", "length") == Continue("too_long")
    assert not ep.done


def test_a_length_cut_turn_with_a_complete_tool_call_runs_the_tool():
    ep = Episode(TASK, TODAY)
    step = ep.on_assistant(tool_call("search", queries=["x"]) + "\n<think>more", "length")
    assert isinstance(step, RunTool)


def test_an_invalid_answer_ends_as_parse_failed():
    ep = Episode(TASK, TODAY)
    assert ep.on_assistant(answer("IMG_001")) == Done(Termination.PARSE_FAILED)  # nothing was shown
    assert [e.kind for e in ep.format_errors] == [FormatErrorKind.UNKNOWN_IMG_ID]
    ep = Episode(TASK, TODAY)
    assert ep.on_assistant("<answer>{'gen_prompt': 'x'}</answer>") == Done(Termination.PARSE_FAILED)


def test_out_of_rounds_the_final_step_with_an_answer_ends_as_answer():
    limits = AgentLimits(max_rounds=3)
    ep = Episode(TASK, TODAY, limits)
    ep.on_assistant(tool_call("image_search", query="owls"))
    ep.on_tool_result(image_search(ep, "owls", 1))
    run_rounds(ep, 2)
    assert ep.in_final_step
    assert ep.messages[-2]["content"].startswith("<tool_response>")
    assert ep.messages[-1] == {"role": "user", "content": FINAL_MESSAGE}
    # the final call is read leniently: the unknown id is dropped and the tool call is ignored
    step = ep.on_assistant(answer("IMG_001", "IMG_077") + tool_call("search", queries=["more"]))
    assert step == Done(
        Termination.ANSWER,
        Answer(
            "the first reference image on a banner",
            (AnswerRef("IMG_001", "note IMG_001", "/cache/owls-0.jpg"),),
        ),
    )
    assert ep.rounds == 4


def test_out_of_rounds_the_final_step_without_an_answer_ends_as_no_answer():
    ep = Episode(TASK, TODAY, AgentLimits(max_rounds=2))
    run_rounds(ep, 2)
    assert ep.on_assistant(tool_call("search", queries=["one more"])) == Done(Termination.NO_ANSWER)
    assert ep.rounds == 3 and ep.answer is None


def test_default_limits_allow_nine_rounds_and_one_final_call():
    ep = Episode(TASK, TODAY)
    run_rounds(ep, 8)
    assert not ep.in_final_step
    run_rounds(ep, 1)
    assert ep.in_final_step and ep.rounds == 9
    assert ep.on_assistant("<think>done</think>") == Done(Termination.NO_ANSWER)
    assert ep.rounds == 10


def test_a_format_error_in_the_last_round_is_followed_by_the_final_message():
    ep = Episode(TASK, TODAY, AgentLimits(max_rounds=1))
    assert ep.on_assistant("no action") == Continue("invalid_format")
    assert [m["content"] for m in ep.messages[-2:]] == [INVALID_FORMAT_MESSAGE, FINAL_MESSAGE]
    assert ep.in_final_step


@pytest.mark.parametrize(
    "termination", [Termination.MAX_TOKENS, Termination.ERROR, Termination.MAX_ROUNDS]
)
def test_abort_ends_the_episode(termination):
    ep = Episode(TASK, TODAY)
    ep.on_assistant(tool_call("search", queries=["x"]))  # a tool call is pending
    assert ep.abort(termination) == Done(termination)
    assert ep.termination is termination and ep.answer is None and ep.done


def test_misuse_raises():
    ep = Episode(TASK, TODAY)
    with pytest.raises(RuntimeError, match="no tool call"):
        ep.on_tool_result(search_result())
    with pytest.raises(ValueError, match="finish_reason"):
        ep.on_assistant("x", "eos")
    ep.on_assistant(tool_call("search", queries=["x"]))
    with pytest.raises(RuntimeError, match="waiting for the result"):
        ep.on_assistant("x")
    with pytest.raises(ValueError, match="ANSWER"):
        ep.abort(Termination.ANSWER)
    ep.abort(Termination.ERROR)
    with pytest.raises(RuntimeError, match="already ended"):
        ep.on_assistant("x")
    with pytest.raises(RuntimeError, match="already ended"):
        ep.abort(Termination.ERROR)


TURNS = st.tuples(
    st.sampled_from(
        [
            tool_call("search", queries=["a"]),
            tool_call("image_search", query="b"),
            '<tool_call>{"name": "draw", "arguments": {}}</tool_call>',
            answer(),
            answer("IMG_001"),
            "<answer>{}</answer>",
            "<think>rambling",
            "",
        ]
    )
    | st.text(max_size=20),
    st.sampled_from(["stop", "length"]),
)


@settings(max_examples=300, deadline=None)
@given(turns=st.lists(TURNS, min_size=11, max_size=11), max_rounds=st.integers(1, 9))
def test_every_episode_ends_within_max_rounds_plus_one_calls(turns, max_rounds):
    ep = Episode(TASK, TODAY, AgentLimits(max_rounds=max_rounds))
    for text, finish_reason in turns:
        step = ep.on_assistant(text, finish_reason)
        if isinstance(step, RunTool):
            ep.on_tool_result(image_search(ep, f"q{ep.rounds}", 1))
        if ep.done:
            break
    assert ep.done and 1 <= ep.rounds <= max_rounds + 1
    assert (ep.answer is not None) == (ep.termination is Termination.ANSWER)
    assert len(ep.turns) == ep.rounds == sum(m["role"] == "assistant" for m in ep.messages)
    roles = [m["role"] for m in ep.messages]
    assert roles[:2] == ["system", "user"] and roles[-1] == "assistant"
    assert all(
        a != b for a, b in zip(roles[1:], roles[2:], strict=False) if a == "assistant"
    )  # a reply follows each turn
