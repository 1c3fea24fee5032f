"""The searchable content of a world: pages and images. The offline search index, the loopback
server and the world generator all speak this contract.

URLs are paths relative to a site root (`/page/tessel-rovers`, `/img/tessel-rovers-emblem.png`);
a backend prefixes its own base: `world://` in process, `http://127.0.0.1:PORT` when served.
A page answers at its slug and, as Wikipedia answers any spelling of an article's title, at any
path that slugifies to it (`/page/Tessel Rovers`, `/page/Tessel_Rovers`, `/page/tessel%20rovers`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from urllib.parse import unquote

PAGE_PREFIX = "/page/"


def slugify(text: str) -> str:
    """'2009 Mivan Industry Prize' -> '2009-mivan-industry-prize': a page's path after /page/."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def page_key(path: str) -> str | None:
    """The page path that a requested path names, query and fragment dropped, percent-escapes
    decoded and the title spelling slugified; None when it is not under /page/."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith(PAGE_PREFIX):
        return None
    return PAGE_PREFIX + slugify(unquote(path[len(PAGE_PREFIX):]))


@dataclasses.dataclass(frozen=True)
class Page:
    path: str  # "/page/<slug>"
    title: str
    text: str  # plain text (markdown-ish), what a reader returns


@dataclasses.dataclass(frozen=True)
class WorldImage:
    path: str  # "/img/<slug>.png"
    title: str  # what an image search result shows as its title
    page_path: str  # the page it appears on
    file: str  # local PNG file, relative to the corpus folder


@dataclasses.dataclass
class Corpus:
    root: Path  # folder holding the image files
    pages: list[Page]
    images: list[WorldImage]

    @functools.cached_property
    def _pages_by_key(self) -> dict[str, Page]:
        return {page_key(p.path): p for p in self.pages}

    def page_at(self, path: str) -> Page | None:
        """The page a requested site path names (see the module docstring), or None."""
        key = page_key(path)
        return self._pages_by_key.get(key) if key else None

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"pages": [dataclasses.asdict(p) for p in self.pages],
               "images": [dataclasses.asdict(i) for i in self.images]}
        (folder / "corpus.json").write_text(json.dumps(doc))

    @classmethod
    def load(cls, folder: Path) -> "Corpus":
        path = Path(folder) / "corpus.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no corpus.json (expected a built world folder)")
        doc = json.loads(path.read_text())
        try:
            pages = [Page(**p) for p in doc["pages"]]
            images = [WorldImage(**i) for i in doc["images"]]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: malformed corpus ({e})") from e
        return cls(Path(folder), pages, images)
