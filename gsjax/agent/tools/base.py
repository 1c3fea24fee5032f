"""What the tools and their backends share: hit records, the backend interfaces, the one failure
type, and how a failure reads as an observation.

Every backend (Serper/Jina/OpenAI-compatible over HTTP, or the offline world in process) raises
`ToolFailure` with a short reason the policy may read; the tools turn it into
`[Tool Error]: <reason>`. A reason never holds a secret: the HTTP client redacts the values of
secret headers from anything it raises.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Protocol, runtime_checkable

from gsjax.agent.types import ImageRegistry, ToolResult


class ToolFailure(Exception):
    """A tool could not do its job; `str(e)` is the short reason shown to the policy."""


@dataclasses.dataclass(frozen=True)
class SearchHit:
    title: str
    link: str
    snippet: str


@dataclasses.dataclass(frozen=True)
class ImageHit:
    title: str
    image_url: str
    page_url: str


@dataclasses.dataclass(frozen=True)
class FetchedImage:
    data: bytes
    content_type: str  # "" when the source did not say


class TextSearch(Protocol):
    def search(self, query: str, num: int) -> list[SearchHit]: ...


class ImageSearch(Protocol):
    def search_images(self, query: str, num: int) -> list[ImageHit]: ...


class PageReader(Protocol):
    def read(self, url: str) -> str: ...


class Summariser(Protocol):
    def summarise(self, text: str, query: str) -> str: ...


class ImageFetcher(Protocol):
    def fetch(self, url: str) -> FetchedImage: ...


@runtime_checkable
class Tool(Protocol):
    """A tool the policy can call by `name`. It never raises: every failure is a result."""

    name: str

    def __call__(self, arguments: Mapping[str, Any], registry: ImageRegistry) -> ToolResult: ...


def tool_error(reason: str) -> ToolResult:
    """The observation of a failed call (the reference's `[Tool Error]: ...`)."""
    reason = " ".join(reason.split()) or "unknown error"
    return ToolResult(text=f"[Tool Error]: {reason}", error=reason)


_BOLD_RE = re.compile(r"</?b>")


def clean_markup(text: str) -> str:
    """Search APIs mark matches with <b></b>; the reference strips them."""
    return _BOLD_RE.sub("", text or "")


# Argument reading. The protocol (`gsjax.agent.protocol`) already normalises arguments; these
# repeat the checks so a tool called directly fails with a reason instead of raising.

TOP_K_DEFAULT = 10
TOP_K_MAX = 10


def read_top_k(arguments: Mapping[str, Any]) -> int:
    value = arguments.get("top_k", TOP_K_DEFAULT)
    if value is None:
        return TOP_K_DEFAULT
    try:
        k = int(float(value))
    except (TypeError, ValueError, OverflowError):
        raise ToolFailure(f'"top_k" must be an integer, got {value!r}') from None
    return min(TOP_K_MAX, max(1, k))


def read_str(arguments: Mapping[str, Any], key: str, *aliases: str) -> str:
    for name in (key, *aliases):
        value = arguments.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise ToolFailure(f'"{key}" must be a non-empty string')
