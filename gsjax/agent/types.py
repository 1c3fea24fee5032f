"""Records that cross the agent's modules: tool calls and results, answers, terminations.

These are the contracts between the protocol (parsing what the policy writes), the tools (what
runs on the host), the rollout loop and the rewards. Keep them small and typed.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class Termination(str, enum.Enum):
    """Every way an episode ends (the reference's names in comments)."""

    ANSWER = "answer"  # a valid <answer> (ENV_DONE)
    MAX_ROUNDS = "max_rounds"  # out of rounds, ended by a caller that skips the forced final step
    MAX_TOKENS = "max_tokens"  # the conversation outgrew its token limit (max_response_length_exceeded)
    REPEATED = "repeated"  # identical consecutive turns, or two too-long turns in a row (repeated_response)
    PARSE_FAILED = "parse_failed"  # an <answer> that is not valid (answer_parse_failed)
    NO_ANSWER = "no_answer"  # the forced final step produced nothing usable (no_answer)
    ERROR = "error"  # the environment itself failed (error)


@dataclasses.dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """An image a tool showed the policy, under its per-trajectory id (IMG_001...)."""

    img_id: str
    path: str  # local file (downloaded and validated)
    url: str = ""
    title: str = ""
    page_url: str = ""


@dataclasses.dataclass
class ToolResult:
    """What a tool call produced. `text` is the observation the policy reads (already rendered
    in the reference's format; a failure reads `[Tool Error]: ...`); `images` are attached."""

    text: str
    images: list[ImageRef] = dataclasses.field(default_factory=list)
    error: str | None = None  # None, or a short reason when the tool failed
    latency_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class AnswerRef:
    img_id: str
    note: str
    path: str = ""  # resolved from the trajectory's image registry


@dataclasses.dataclass(frozen=True)
class Answer:
    gen_prompt: str
    references: tuple[AnswerRef, ...]


class FormatErrorKind(str, enum.Enum):
    NO_ACTION = "no_action"  # neither a complete <tool_call> nor <answer>
    BAD_TOOL_JSON = "bad_tool_json"  # tool call body is not a JSON object with name/arguments
    UNKNOWN_TOOL = "unknown_tool"
    BAD_ARGUMENTS = "bad_arguments"  # arguments missing or of the wrong type for the tool
    BAD_ANSWER_JSON = "bad_answer_json"  # answer body is not strict JSON with the required keys
    UNKNOWN_IMG_ID = "unknown_img_id"  # an answer refers to an image the trajectory never saw


@dataclasses.dataclass(frozen=True)
class FormatError:
    kind: FormatErrorKind
    detail: str


Action = ToolCall | Answer | FormatError


class ImageRegistry:
    """Per-trajectory image ids. Every image a tool shows gets `IMG_001`, `IMG_002`... in order of
    first appearance; the same image (same local path or same URL) keeps its id across searches."""

    def __init__(self) -> None:
        self._by_id: dict[str, ImageRef] = {}
        self._by_key: dict[str, str] = {}

    def register(self, path: str, url: str = "", title: str = "", page_url: str = "") -> ImageRef:
        for key in (path, url):
            if key and key in self._by_key:
                return self._by_id[self._by_key[key]]
        img_id = f"IMG_{len(self._by_id) + 1:03d}"
        ref = ImageRef(img_id, path, url, title, page_url)
        self._by_id[img_id] = ref
        for key in (path, url):
            if key:
                self._by_key[key] = img_id
        return ref

    def get(self, img_id: str) -> ImageRef | None:
        return self._by_id.get(img_id)

    def __contains__(self, img_id: str) -> bool:
        return img_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def all(self) -> list[ImageRef]:
        return list(self._by_id.values())
