"""The `search` tool: web search for one or more queries, run one after another.

Observation (the reference's format): per query

    --- search result for [<query as written>] ---
    [title](link) snippet

    [title](link) snippet
    --- end of search result ---

with the blocks separated by a blank line. Quotes (" and ') are stripped from a query before it is
sent; `top_k` is clamped to [1, 10] (default 10). A query without hits reads
`No results for '<query>'.`. A query whose search failed reads `[Tool Error]: <reason>` inside its
block; when every query failed the whole observation is `[Tool Error]: <first reason>` and the
result's `error` is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gsjax.agent.tools.base import SearchHit, TextSearch, ToolFailure, read_top_k, tool_error
from gsjax.agent.types import ImageRegistry, ToolResult


def strip_quotes(query: str) -> str:
    return query.replace('"', "").replace("'", "")


def render_hits(hits: list[SearchHit], sent_query: str) -> str:
    if not hits:
        return f"No results for '{sent_query}'."
    return "\n\n".join(f"[{h.title}]({h.link}) {h.snippet}" for h in hits)


def render_search(blocks: list[tuple[str, str]]) -> str:
    return "\n\n".join(f"--- search result for [{q}] ---\n{body}\n--- end of search result ---" for q, body in blocks)


class SearchTool:
    name = "search"

    def __init__(self, backend: TextSearch) -> None:
        self.backend = backend

    def __call__(self, arguments: Mapping[str, Any], registry: ImageRegistry) -> ToolResult:
        try:
            queries = _read_queries(arguments)
            top_k = read_top_k(arguments)
        except ToolFailure as e:
            return tool_error(str(e))
        blocks: list[tuple[str, str]] = []
        failures: list[str] = []
        for query in queries:
            sent = strip_quotes(query).strip()
            try:
                if not sent:
                    raise ToolFailure("the query is empty once quotes are removed")
                body = render_hits(self.backend.search(sent, top_k)[:top_k], sent)
            except ToolFailure as e:
                failures.append(str(e))
                body = tool_error(str(e)).text
            blocks.append((query, body))
        if len(failures) == len(queries):
            return tool_error(failures[0])
        return ToolResult(render_search(blocks))


def _read_queries(arguments: Mapping[str, Any]) -> list[str]:
    queries = arguments.get("queries", arguments.get("query"))
    if isinstance(queries, str):
        queries = [queries]
    if not isinstance(queries, list) or not queries or not all(isinstance(q, str) and q.strip() for q in queries):
        raise ToolFailure('"queries" must be a non-empty list of non-empty strings')
    return queries
