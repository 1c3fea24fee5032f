"""The searchable content of a world: pages and images. The offline search index, the loopback
server and the world generator all speak this contract.

URLs are paths relative to a site root (`/page/tessel-rovers`, `/img/tessel-rovers-emblem.png`);
a backend prefixes its own base: `world://` in process, `http://127.0.0.1:PORT` when served.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


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
