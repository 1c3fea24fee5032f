"""The `browse` tool: read one page (or up to five) and answer a query from it.

Each URL is read through the page reader (which enforces the URL policy and the byte cap). With a
summariser the page is summarised for the query (long pages in chunks, see `summary.py`); without
one the page text is returned, cut to 120,000 characters (then "..." is appended), as the
reference. Several URLs: their observations joined by a blank line, `=======`, a blank line. A URL
that fails reads `[Tool Error]: <reason>`; when every URL failed the result's `error` is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gsjax.agent.tools.base import PageReader, Summariser, ToolFailure, read_str, tool_error
from gsjax.agent.types import ImageRegistry, ToolResult

MAX_URLS = 5
RAW_TEXT_CHARS = 120_000
SEPARATOR = "\n\n=======\n\n"
DEFAULT_QUERY = "Detailed summary of the page."  # when the call names no query (as the reference)


class BrowseTool:
    name = "browse"

    def __init__(self, reader: PageReader, summariser: Summariser | None = None, *,
                 raw_text_chars: int = RAW_TEXT_CHARS) -> None:
        self.reader = reader
        self.summariser = summariser
        self.raw_text_chars = raw_text_chars

    def __call__(self, arguments: Mapping[str, Any], registry: ImageRegistry) -> ToolResult:
        try:
            urls = _read_urls(arguments)
            query = _read_query(arguments)
        except ToolFailure as e:
            return tool_error(str(e))
        parts: list[str] = []
        failures: list[str] = []
        for url in urls:
            try:
                parts.append(self._one(url, query))
            except ToolFailure as e:
                failures.append(str(e))
                parts.append(tool_error(str(e)).text)
        if len(failures) == len(urls):
            return tool_error(failures[0] if len(urls) == 1 else "; ".join(failures))
        return ToolResult(SEPARATOR.join(parts))

    def _one(self, url: str, query: str) -> str:
        text = self.reader.read(url)
        if not text.strip():
            raise ToolFailure(f"the page {url} has no text")
        if self.summariser is not None:
            return self.summariser.summarise(text, query)
        if len(text) > self.raw_text_chars:
            return text[: self.raw_text_chars] + "..."
        return text


def _read_query(arguments: Mapping[str, Any]) -> str:
    try:
        return read_str(arguments, "query", "goal")
    except ToolFailure:
        return DEFAULT_QUERY


def _read_urls(arguments: Mapping[str, Any]) -> list[str]:
    url = arguments.get("url")
    if isinstance(url, str) and url.strip():
        return [url.strip()]
    if isinstance(url, list) and url and all(isinstance(u, str) and u.strip() for u in url):
        return [u.strip() for u in url[:MAX_URLS]]
    raise ToolFailure('"url" must be a non-empty string or a list of them')
