"""Page summaries from a chat model behind an OpenAI-compatible API (`POST {base}/chat/completions`).

The model is asked, at temperature 0, to read the page and answer the browse query from it, or to
say plainly that the page does not answer it. A page longer than `chunk_tokens` is split into
even chunks that overlap by `overlap_tokens`; each chunk is answered on its own and the answers are
returned as numbered parts. Tokens are counted approximately, as characters / 4 (the reference
counts cl100k tokens: 95k per chunk, 1024 overlap); the defaults keep its numbers.
"""

from __future__ import annotations

import math
import re

from gsjax.agent.tools.base import ToolFailure
from gsjax.agent.tools.http import HttpClient
from gsjax.agent.tools.serper import api_key

CHARS_PER_TOKEN = 4


def approx_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def split_chunks(text: str, chunk_tokens: int, overlap_tokens: int) -> list[str]:
    """`text` in as few even chunks as keep each within `chunk_tokens` (approximate tokens), each
    chunk also repeating the first `overlap_tokens` of the next one. Short text is one chunk."""
    if chunk_tokens <= overlap_tokens or overlap_tokens < 0:
        raise ValueError(f"need chunk_tokens > overlap_tokens >= 0, got {chunk_tokens} and {overlap_tokens}")
    size, overlap = chunk_tokens * CHARS_PER_TOKEN, overlap_tokens * CHARS_PER_TOKEN
    if len(text) <= size:
        return [text]
    n = math.ceil((len(text) - overlap) / (size - overlap))
    step = math.ceil((len(text) - overlap) / n)
    return [text[i * step: i * step + step + overlap] for i in range(n)]


def summary_prompt(page: str, query: str) -> str:
    return (
        "Below is the text of a web page, between the two markers.\n"
        "=== PAGE START ===\n"
        f"{page}\n"
        "=== PAGE END ===\n\n"
        "Answer the question below using only what this page says. Quote names, numbers and "
        "descriptions of appearance exactly as the page gives them. If the page says nothing "
        "that answers the question, reply that this page does not answer it, and nothing else.\n\n"
        f"Question: {query}"
    )


SPLIT_NOTE = (
    "The page was too long to read in one piece, so it was split into {n} overlapping parts and "
    "each part was answered on its own. Combine the parts for the full answer.\n"
)


class ChatSummariser:
    def __init__(
        self,
        client: HttpClient,
        base: str,
        model: str,
        key_env: str = "",
        *,
        max_tokens: int = 8192,
        chunk_tokens: int = 95000,
        overlap_tokens: int = 1024,
    ) -> None:
        if not model:
            raise ValueError("ChatSummariser needs a model name")
        split_chunks("", chunk_tokens, overlap_tokens)  # validates the two sizes
        self.client = client
        self.base = base.rstrip("/")
        self.model = model
        self.key_env = key_env
        self.max_tokens = max_tokens
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens

    def __repr__(self) -> str:
        return f"ChatSummariser(base={self.base!r}, model={self.model!r}, key_env={self.key_env!r})"

    def summarise(self, text: str, query: str) -> str:
        chunks = split_chunks(text, self.chunk_tokens, self.overlap_tokens)
        if len(chunks) == 1:
            return self._ask(summary_prompt(text, query))
        out = [SPLIT_NOTE.format(n=len(chunks))]
        for i, chunk in enumerate(chunks, 1):
            answer = self._ask(summary_prompt(chunk, query))
            out.append(f"--- begin of result part {i} ---\n{answer}\n--- end of result part {i} ---\n")
        return "\n".join(out)

    def _ask(self, prompt: str) -> str:
        key = api_key(self.key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        data = self.client.post(f"{self.base}/chat/completions", headers=headers, json_body=body, trusted=True).json()
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ToolFailure("the summary API reply has no choices[0].message.content") from None
        if not isinstance(content, str) or not content.strip():
            raise ToolFailure("the summary model returned an empty answer")
        return content.strip()


_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class ExtractiveSummariser:
    """A summary without a model: the `sentences` sentences of the page that best match the query,
    in page order. A sentence scores the inverse sentence frequency, log(1 + n / df), of each query
    word it contains, so words the whole page repeats (its subject's name) count little and the
    words that set the question apart ("motto", "emblem") count most. For the offline world and for
    small policies whose context cannot hold whole pages; a real run uses `ChatSummariser`."""

    def __init__(self, sentences: int = 2) -> None:
        if sentences < 1:
            raise ValueError(f"ExtractiveSummariser needs sentences >= 1, got {sentences}")
        self.sentences = sentences

    def __repr__(self) -> str:
        return f"ExtractiveSummariser(sentences={self.sentences})"

    def summarise(self, text: str, query: str) -> str:
        candidates = [s.strip() for line in text.splitlines() for s in _SENTENCE_END.split(line)]
        candidates = [s for s in candidates if s and not s.endswith(":")]
        words = [set(_WORD.findall(s.lower())) for s in candidates]
        asked = set(_WORD.findall(query.lower()))
        df = {w: sum(w in ws for ws in words) for w in asked}
        scores = [sum(math.log(1 + len(words) / df[w]) for w in asked & ws) for ws in words]
        best = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: (-scores[i], i))[: self.sentences]
        if not best:
            return "This page does not answer the question."
        return "\n".join(candidates[i] for i in sorted(best))
