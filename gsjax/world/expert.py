"""A scripted expert that solves world prompts through the agent's real tool interface.

It follows the hop path of a prompt's answer key (search the clue, browse the page that names the
subject, look the subject up, image-search it, answer), but it only moves on with what the tools
actually show it: the page to browse is taken from a search result's link, each subject's name
and looks must appear in what it read, and each reference image is the IMG id whose search result
title names the subject. When the tools do not reveal something it needs, it answers with what it
has (and fails the item) instead of using hidden knowledge. Its episodes run through `Episode`, so
they end in the same terminations and messages a policy's would, and they become sft_data.json
examples (sharegpt) with the tool responses' image placeholders.

With a `Slip`, the expert first makes one of the mistakes a sampled policy makes at one tool call
(a query copied from the wrong span of what it has read, or a call cut off mid-JSON), reads what
the tools really answer to it, and then makes the right call: a recovery to learn from. The
mistaken turn is marked `"train": false`, context only.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
import re
from collections.abc import Callable
from pathlib import Path

from gsjax.agent.episode import Done, Episode, RunTool, message_text
from gsjax.agent.protocol import AgentLimits, render_answer, render_tool_call
from gsjax.agent.texts import AgentTexts
from gsjax.agent.types import Answer, AnswerRef, ImageRegistry, Termination, ToolCall, ToolResult
from gsjax.data.formats import Message, SFTExample
from gsjax.world.prompts import AnswerKey, read_truth

RunToolFn = Callable[[ToolCall, ImageRegistry], ToolResult]
_ORDINALS = ("first", "second", "third", "fourth")
_IMG_LINE = re.compile(r"^(IMG_\d{3}): title: (.*)$", re.MULTILINE)


@dataclasses.dataclass
class ExpertResult:
    key: AnswerKey
    episode: Episode
    found_all: bool  # every fact and image the key needs was read from the tools
    missing: list[str]


def _link_for(observation: str, page: str) -> str | None:
    """The full link of a search result whose URL ends with the site path `page`."""
    for match in re.finditer(r"\]\((\S+?)\)", observation):
        if match.group(1).endswith(page):
            return match.group(1)
    return None


def _image_for(observation: str, name: str) -> str | None:
    for img_id, title in _IMG_LINE.findall(observation):
        if name.lower() in title.lower():
            return img_id
    return None


SLIP_KINDS = ("query", "json")


@dataclasses.dataclass(frozen=True)
class Slip:
    """A mistake before call `at` (0-based, of `schedule(key.steps)`): `kind` "query" sends a span
    of 2-5 words of what the expert has read so far (the prompt, the tools' answers) as the call's
    query; "json" cuts the call's JSON off. `seed` picks the span or the cut."""

    at: int
    kind: str
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SLIP_KINDS:
            raise ValueError(f"Slip.kind must be one of {SLIP_KINDS}, got {self.kind!r}")
        if self.at < 0:
            raise ValueError(f"Slip.at must be >= 0, got {self.at}")


def random_slip(key: AnswerKey, rng: random.Random, max_rounds: int) -> Slip | None:
    """One slip at a uniformly drawn call of the key's schedule, "query" three times in four; None
    when the extra call would not leave a round for the answer."""
    calls = len(schedule(key.steps))
    if calls + 2 > max_rounds:
        return None
    return Slip(rng.randrange(calls), "json" if rng.random() < 0.25 else "query", rng.randrange(2**31))


def _wrong_query(right: str, read: list[str], rng: random.Random) -> str:
    """2-5 consecutive words of `read` sharing no word of 3 or more letters with `right`: the wrong
    span a copying policy lands on, and one that does not find by chance what `right` finds."""
    words = [w for text in read for w in re.findall(r"[\w'-]+", text)]
    taboo = {w.lower() for w in re.findall(r"[\w'-]+", right) if len(w) >= 3}
    for _ in range(50):
        n = rng.randint(2, 5)
        start = rng.randrange(max(1, len(words) - n + 1))
        span = words[start:start + n]
        if span and not taboo & {w.lower() for w in span}:
            return " ".join(span)
    return "the"


class _Script:
    """Drives one Episode turn by turn, recording what the expert could not find."""

    def __init__(self, key: AnswerKey, run_tool: RunToolFn, today: datetime.date, limits: AgentLimits,
                 texts: AgentTexts):
        self.key, self.run_tool = key, run_tool
        self.episode = Episode(key.prompt, today, limits, texts)
        self.missing: list[str] = []
        self.read: list[str] = []  # every observation so far

    def call(self, think: str, call: ToolCall) -> str:
        step = self.episode.on_assistant(f"<think>{think}</think>\n{render_tool_call(call)}", "stop")
        if not isinstance(step, RunTool):
            raise RuntimeError(f"expert's tool call was not accepted: {step}")
        result = self.run_tool(step.call, self.episode.registry)
        self.episode.on_tool_result(result)
        self.read.append(result.text)
        return result.text

    def slip(self, think: str, call: ToolCall, slip: Slip) -> None:
        """The mistaken version of `call`, answered as the tools and the episode answer it, kept
        in the conversation as untrained context."""
        rng = random.Random(slip.seed)
        if slip.kind == "json":
            rendered = render_tool_call(call)
            body = rendered[len("<tool_call>"):-len("</tool_call>")]
            cut = rng.randint(len(body) // 2, len(body) - 3)
            text = f"<think>{think}</think>\n<tool_call>{body[:cut]}</tool_call>"
        else:
            args = dict(call.arguments)
            field = "queries" if call.name == "search" else "query"
            right = args[field][0] if field == "queries" else args[field]
            wrong = _wrong_query(right, [self.episode.messages[1]["content"], *self.read], rng)
            args[field] = [wrong] if field == "queries" else wrong
            text = f"<think>{think}</think>\n{render_tool_call(ToolCall(call.name, args))}"
        index = len(self.episode.messages)
        step = self.episode.on_assistant(text, "stop")
        self.episode.messages[index]["train"] = False
        if isinstance(step, RunTool):
            result = self.run_tool(step.call, self.episode.registry)
            self.episode.on_tool_result(result)
            self.read.append(result.text)
        elif isinstance(step, Done):
            raise RuntimeError(f"expert's slip ended the episode: {step}")

    def seen(self, text: str) -> bool:
        return any(text.lower() in obs.lower() for obs in self.read)


def schedule(steps) -> list[list]:
    """The key's steps as tool calls: each subject's chain (ending at its image search) is
    interleaved with the others' step by step, and neighbouring searches share one call (the
    search tool takes several queries), so two two-hop subjects fit in the round limit."""
    chains, current = [], []
    for step in steps:
        current.append(step)
        if step.tool == "image_search":
            chains.append(current)
            current = []
    if current:
        chains.append(current)
    waves = [c[i] for i in range(max(map(len, chains), default=0)) for c in chains if i < len(c)]
    calls: list[list] = []
    for step in waves:
        if step.tool == "search" and calls and calls[-1][0].tool == "search":
            calls[-1].append(step)
        else:
            calls.append([step])
    return calls


def solve(key: AnswerKey, run_tool: RunToolFn, today: datetime.date, limits: AgentLimits = AgentLimits(),
          top_k: int = 5, image_top_k: int = 5, slip: Slip | None = None, texts: AgentTexts = AgentTexts(),
          plan: bool = False) -> ExpertResult:
    """One episode on `key`; `top_k` / `image_top_k` are what its search and image_search calls ask
    for; with `slip`, one mistaken call (untrained context) comes before the right one; `texts`: what
    the episode says to it (the system prompt its SFT example keeps). With `plan`, the first thought
    also says what the picture needs (`_needs`), and the last thought repeats it."""
    s = _Script(key, run_tool, today, limits, texts)
    refs: list[AnswerRef] = []

    def call(i: int, think: str, tool_call: ToolCall) -> None:
        if plan and i == 0:
            think = f"{think} I need {_needs(key)}."
        if slip is not None and slip.at == i:
            s.slip(think, tool_call, slip)
        s.call(think, tool_call)

    for i, group in enumerate(schedule(key.steps)):
        step = group[0]
        if step.tool == "search":
            queries = [g.query for g in group]
            call(i, f"Search for {' and '.join(queries)}.",
                 ToolCall("search", {"queries": queries, "top_k": top_k}))
        elif step.tool == "browse":
            link = None
            for obs in reversed(s.read):
                link = _link_for(obs, step.url)
                if link:
                    break
            if link is None:
                s.missing.append(f"no search result linked to {step.url}")
                continue
            call(i, "Read the page that should answer this.",
                 ToolCall("browse", {"url": link, "query": step.query}))
        elif step.tool == "image_search":
            call(i, f"Find a photo of \"{step.query}\".",
                 ToolCall("image_search", {"query": step.query, "top_k": image_top_k}))
            subject = next(n for n in key.names if n.lower() in step.query.lower())
            img_id = _image_for(s.read[-1], subject)
            if img_id is None:
                s.missing.append(f"no image of {subject}")
                continue
            refs.append(AnswerRef(img_id, subject))
        else:
            raise ValueError(f"answer key {key.id}: unknown tool {step.tool!r}")

    pictured = {r.note for r in refs}
    for name, sig in zip(key.names, key.signatures):
        if not s.seen(name):
            s.missing.append(f"name {name} never seen")
        if not s.seen(sig.describe()) and name not in pictured:  # an undescribed entity's photo shows them
            s.missing.append(f"looks of {name} never read or seen")
    if key.text and not s.seen(key.text):
        s.missing.append(f"text {key.text!r} never read")

    answer = Answer(_ordered_prompt(key, refs) if refs else "", tuple(sorted(refs, key=lambda r: r.img_id)))
    if plan:
        think = f"I have {_needs(key)}" + (f", the text \"{written_text(answer)}\"." if key.text else ".")
    else:
        think = "I have the subject, its looks" + (f" and the text \"{written_text(answer)}\"." if key.text else ".")
    final = s.episode.on_assistant(f"<think>{think}</think>\n{render_answer(answer)}", "stop")
    if not isinstance(final, Done):  # an answer is never a tool error; kept total all the same
        s.episode.abort(Termination.NO_ANSWER)
    return ExpertResult(key, s.episode, not s.missing, s.missing)


_TEXT_NOUN = re.compile(r"with (?:its|their) (.+?) written under it")


def _needs(key: AnswerKey) -> str:
    """What the picture needs, as the plan says it right after the prompt: "the subject, its looks"
    and, where the prompt asks for text, "and its <noun>" in the prompt's word (motto, creed, name).
    Said first where the prompt is near, the decision is there for the last thought to copy: after
    "its looks" it wrote " and its motto" or "." before."""
    if not key.text:
        return "the subject, its looks"
    m = _TEXT_NOUN.search(key.prompt)
    return f"the subject, its looks and its {m.group(1) if m else 'text'}"


def written_text(answer: Answer) -> str:
    """The text the answer has the picture show, as it quotes it: the final thought quotes it too, so
    the answer's text is a copy of the nearest quote before it (a copying policy otherwise left the
    sentence out)."""
    m = re.search(r'the text "([^"]*)"', answer.gen_prompt)
    return m.group(1) if m else ""


def _ordered_prompt(key: AnswerKey, refs: list[AnswerRef]) -> str:
    """The key's gen_prompt with its ordinals renumbered for the references sorted by img_id (the
    protocol's rule): subject i's "(the first reference image)" becomes the ordinal of its image."""
    rank = {r.note: j for j, r in enumerate(sorted(refs, key=lambda r: r.img_id))}
    prompt = key.gen_prompt
    for i in range(len(key.names)):
        prompt = prompt.replace(f"(the {_ORDINALS[i]} reference image)", f"(the #{i} reference image)")
    for i, name in enumerate(key.names):
        j = rank.get(name)
        word = _ORDINALS[j] if j is not None else "missing"
        prompt = prompt.replace(f"(the #{i} reference image)", f"(the {word} reference image)")
    return prompt


def is_correct(result: ExpertResult, image_urls: dict[str, str] | None = None) -> bool:
    """Exact entity match: the episode ended with an answer whose references are, in order, photos
    of the key's subjects, and whose gen_prompt is non-empty. (The world judge scores more finely.)"""
    ep = result.episode
    if ep.answer is None or not ep.answer.gen_prompt.strip():
        return False
    key = result.key
    if len(ep.answer.references) != len(key.names):
        return False
    for i, name in enumerate(key.names):  # "<name> ... (the <ordinal> reference image)"
        m = re.search(re.escape(name) + r"[^()]*\(the (\w+) reference image\)", ep.answer.gen_prompt)
        if m is None or m.group(1) not in _ORDINALS[: len(key.names)]:
            return False
        img = ep.registry.get(ep.answer.references[_ORDINALS.index(m.group(1))].img_id)
        if img is None or not any(img.url.endswith(p) for p in key.reference_images[i]):
            return False
    return True


def to_sft_example(episode: Episode) -> SFTExample:
    """The episode as a sharegpt sft_data.json example: each attached image becomes an `<image>`
    marker at the start of its tool-response user message, and its path joins `images`."""
    messages: list[Message] = []
    images: list[str] = []
    for m in episode.messages:
        images.extend(m.get("images") or [])
        messages.append(Message(m["role"], message_text(m), m.get("train", True)))
    return SFTExample(tuple(messages), tuple(images))


def solve_split(world_dir: Path, split: str, toolbox, today: datetime.date, limit: int | None = None,
                progress: bool = True, **solve_kwargs) -> list[ExpertResult]:
    """The expert over one split's answer keys, tool calls through `toolbox` (`solve_kwargs` go to
    `solve`: limits, top_k, image_top_k)."""
    from tqdm import tqdm

    keys = [k for k in read_truth(Path(world_dir) / "truth.json").values() if k.split == split][:limit]
    return [solve(k, toolbox.run, today, **solve_kwargs) for k in tqdm(keys, desc=f"expert on {split}", disable=not progress)]


def main(argv: list[str] | None = None) -> None:
    import argparse

    from gsjax.agent.tools import ToolsConfig, build_toolbox
    from gsjax.data.formats import write_sft_data

    parser = argparse.ArgumentParser(description="Run the scripted expert over a built world and write sft_data.json.")
    parser.add_argument("--world", required=True, help="a folder built by python -m gsjax.world.build")
    parser.add_argument("--split", default="train", choices=("train", "eval"))
    parser.add_argument("--out", default="", help="sft_data.json to write (default: WORLD/sft_data_<split>.json)")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    world = Path(args.world)
    image_dir = world / "tool_images" if args.out == "" else Path(args.out).parent / "tool_images"
    with build_toolbox(ToolsConfig(backend="local", world_dir=str(world), image_dir=str(image_dir))) as toolbox:
        results = solve_split(world, args.split, toolbox, datetime.date.today(), args.limit)
    solved = [r for r in results if is_correct(r)]
    out = Path(args.out) if args.out else world / f"sft_data_{args.split}.json"
    write_sft_data(out, [to_sft_example(r.episode) for r in solved])
    print(f"expert solved {len(solved)} of {len(results)} {args.split} prompts "
          f"({100 * len(solved) / max(1, len(results)):.1f}%); wrote {len(solved)} trajectories to {out}")


if __name__ == "__main__":
    main()
