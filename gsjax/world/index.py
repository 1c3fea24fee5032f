"""The offline world as tool backends: BM25 search over a Corpus, a page reader, image files.

`WorldIndex(corpus, base)` answers `search` (pages: title + text) and `search_images` (images:
the image title + its page's title and first lines) with the same hit records as the HTTP
backends, and URLs `base + path`: `world:///page/<slug>` in process (the default base), or
`http://127.0.0.1:PORT/page/<slug>` when `gsjax.world.serve` builds it with its own address.
`WorldReader` returns a page's text for such a URL (in the layout a Jina reader answers with), and
`WorldImageFetcher` "downloads" an image by reading its file. Neither touches a path that is not
in the corpus.

Tokens: lower-cased runs of letters and digits, English stop words dropped, no stemming (the
world's names are invented words). A page's title counts twice. Hits with score 0 are dropped;
ties keep corpus order.
"""

from __future__ import annotations

import mimetypes
import re
import threading

import bm25s
import numpy as np

from gsjax.agent.tools.base import FetchedImage, ImageHit, SearchHit, ToolFailure
from gsjax.world.corpus import Corpus, Page

WORLD_BASE = "world://"
SNIPPET_CHARS = 240
IMAGE_CONTEXT_CHARS = 300

_STOP = frozenset(
    "a an and are as at be by for from has have he her his in is it its of on or she that the their "
    "them they this to was were what which who with how when where why does do did".split()
)
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def tokenize(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def render_page_text(page: Page, url: str) -> str:
    """A page as a reader returns it (the layout of a Jina reader's answer)."""
    return f"Title: {page.title}\n\nURL Source: {url}\n\nMarkdown Content:\n{page.text}"


def snippet(text: str, query_tokens: set[str], limit: int = SNIPPET_CHARS) -> str:
    """The sentence of `text` sharing the most words with the query (the first one on ties)."""
    best, best_score = "", -1
    for sentence in _SENTENCE.split(text):
        sentence = " ".join(sentence.split())
        if not sentence:
            continue
        score = len(query_tokens & set(tokenize(sentence)))
        if score > best_score:
            best, best_score = sentence, score
    return best if len(best) <= limit else best[: limit - 3].rstrip() + "..."


class _Bm25:
    def __init__(self, docs: list[list[str]]) -> None:
        self.n = len(docs)
        self._lock = threading.Lock()
        self._model = bm25s.BM25()
        if self.n:
            # bm25s needs one non-empty document to build a vocabulary.
            self._model.index([d or ["_"] for d in docs], show_progress=False)

    def top(self, tokens: list[str], k: int) -> list[int]:
        if not tokens or not self.n or k < 1:
            return []
        with self._lock:
            ids, scores = self._model.retrieve([tokens], k=min(k, self.n), show_progress=False)
        ids, scores = np.asarray(ids[0]), np.asarray(scores[0])
        order = sorted((i for i in range(len(ids)) if scores[i] > 0), key=lambda i: (-float(scores[i]), int(ids[i])))
        return [int(ids[i]) for i in order]


class WorldIndex:
    """Text and image search over a Corpus (the `TextSearch` and `ImageSearch` interfaces)."""

    def __init__(self, corpus: Corpus, base: str = WORLD_BASE) -> None:
        self.corpus = corpus
        self.base = base.rstrip("/") if base != WORLD_BASE else base
        pages_by_path = {p.path: p for p in corpus.pages}
        self._pages = _Bm25([tokenize(f"{p.title} {p.title} {p.text}") for p in corpus.pages])
        image_docs = []
        for image in corpus.images:
            page = pages_by_path.get(image.page_path)
            context = f"{page.title} {page.text[:IMAGE_CONTEXT_CHARS]}" if page else ""
            image_docs.append(tokenize(f"{image.title} {image.title} {context}"))
        self._images = _Bm25(image_docs)

    def url(self, path: str) -> str:
        return self.base + path

    def search(self, query: str, num: int) -> list[SearchHit]:
        tokens = tokenize(query)
        wanted = set(tokens)
        hits = []
        for i in self._pages.top(tokens, num):
            page = self.corpus.pages[i]
            hits.append(SearchHit(page.title, self.url(page.path), snippet(page.text, wanted)))
        return hits

    def search_images(self, query: str, num: int) -> list[ImageHit]:
        hits = []
        for i in self._images.top(tokenize(query), num):
            image = self.corpus.images[i]
            hits.append(ImageHit(image.title, self.url(image.path), self.url(image.page_path)))
        return hits


def _world_path(url: str, base: str) -> str | None:
    if not url.startswith(base):
        return None
    path = url[len(base):]
    return path if path.startswith("/") else "/" + path


class WorldReader:
    """Reads pages of the world by URL (`base + page path`); any other URL is a failure."""

    def __init__(self, corpus: Corpus, base: str = WORLD_BASE) -> None:
        self.base = base
        self.corpus = corpus

    def read(self, url: str) -> str:
        path = _world_path(url, self.base)
        if path is None:
            raise ToolFailure(f"cannot read {url[:200]}: only pages of the offline world ({self.base}...) can be read")
        page = self.corpus.page_at(path)
        if page is None:
            raise ToolFailure(f"no page at {url[:200]}")
        return render_page_text(page, url)


class WorldImageFetcher:
    """`fetch(url)` reads the file of the world image at that URL."""

    def __init__(self, corpus: Corpus, base: str = WORLD_BASE) -> None:
        self.base = base
        self.root = corpus.root
        self._images = {i.path: i for i in corpus.images}

    def fetch(self, url: str) -> FetchedImage:
        path = _world_path(url, self.base)
        image = self._images.get(path) if path else None
        if image is None:
            raise ToolFailure(f"no world image at {url[:200]}")
        try:
            data = (self.root / image.file).read_bytes()
        except OSError as e:
            raise ToolFailure(f"cannot read the image file of {url[:200]} ({e.strerror})") from None
        return FetchedImage(data, mimetypes.guess_type(image.file)[0] or "")
