"""Page readers over HTTP: a Jina-compatible reader API, or fetching the page directly.

Both check the page's URL against the client's URL policy before anything is sent, and keep at
most the client's byte cap of the page (`truncate=True`: a longer page is cut, not refused).
"""

from __future__ import annotations

import html
import html.parser

from gsjax.agent.tools.base import ToolFailure
from gsjax.agent.tools.http import HttpClient
from gsjax.agent.tools.serper import api_key


class JinaReader:
    """`GET {base}/{url}` returns the page as text (`Authorization: Bearer <key>` when a key
    variable is named). The reader service fetches the page; we only check that the policy allows
    the URL, so the agent cannot read through it what it could not fetch itself."""

    def __init__(self, client: HttpClient, base: str = "https://r.jina.ai", key_env: str = "JINA_API_KEYS") -> None:
        self.client = client
        self.base = base.rstrip("/")
        self.key_env = key_env

    def __repr__(self) -> str:
        return f"JinaReader(base={self.base!r}, key_env={self.key_env!r})"

    def read(self, url: str) -> str:
        self.client.check_url(url)
        key = api_key(self.key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        resp = self.client.get(f"{self.base}/{url}", headers=headers, trusted=True, truncate=True)
        return resp.text()


class DirectReader:
    """Fetches the page itself (every redirect hop checked by the policy); HTML becomes text."""

    def __init__(self, client: HttpClient) -> None:
        self.client = client

    def read(self, url: str) -> str:
        resp = self.client.get(url, headers={"Accept": "text/html,text/plain;q=0.9,*/*;q=0.1"}, truncate=True)
        kind = resp.content_type.split(";")[0].strip().lower()
        if kind in ("text/html", "application/xhtml+xml"):
            return html_to_text(resp.text())
        if kind.startswith("text/") or kind in ("", "application/json", "application/xml"):
            return resp.text()
        raise ToolFailure(f"{url} is {kind}, not a text page")


class _TextExtractor(html.parser.HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template", "svg"})
    _BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section",
                        "article", "header", "footer", "pre", "blockquote", "title", "table", "ul", "ol"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skipping:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Visible text of an HTML page, one block per line (a reader, not a renderer)."""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except (AssertionError, ValueError):  # malformed markup the parser gives up on
        return html.unescape(markup)
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)
