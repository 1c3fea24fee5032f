"""A small hand-made world for the tool tests (no tests here): a dozen pages, PNG images made with
PIL, one page long enough to need chunking, and a few bad image files.

Import the fixtures into a test module with `from test_tools_support import corpus, ...`.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from gsjax.agent.tools import HttpConfig, ToolsConfig
from gsjax.world.corpus import Corpus, Page, WorldImage
from gsjax.world.serve import WorldServer

PLANTED_KEY = "sk-planted-9f3c1e77d2-SECRET"

ENTITIES = [
    ("tessel-rovers", "Tessel Rovers", "a football club from Brimhall",
     "The emblem of the Tessel Rovers is a green shield with a white fox."),
    ("glimmer-cup", "Glimmer Cup", "a football trophy",
     "The 2031 Glimmer Cup was won by the Tessel Rovers. The trophy is a silver bowl."),
    ("pefark-foundry", "Pefark Foundry", "a manufacturer in Noprage Bay",
     "The logo of Pefark Foundry is a black oval with pink stripes."),
    ("haifar-zeshe", "Haifar Zeshe", "an engineer",
     "Haifar Zeshe founded Pefark Foundry and wears round glasses."),
    ("noprage-bay", "Noprage Bay", "a harbour town",
     "Noprage Bay has a red lighthouse on its northern pier."),
    ("lumen-moth", "Lumen Moth", "a glowing insect",
     "The Lumen Moth has blue wings with yellow spots."),
    ("orrin-tower", "Orrin Tower", "a clock tower",
     "Orrin Tower is a tall brick tower with a golden clock face."),
    ("velda-quay", "Velda Quay", "a singer",
     "Velda Quay performs in a purple coat with a silver microphone."),
    ("kessin-comet", "Kessin Comet", "a comet seen in 2029",
     "The Kessin Comet has a forked orange tail."),
    ("brimhall", "Brimhall", "a city in the Gritrer region",
     "Brimhall is home to the Tessel Rovers and Orrin Tower."),
    ("saltwind-games", "Saltwind Games", "a sports festival",
     "The Saltwind Games mascot is a grey seal holding a torch."),
]
LONG_SLUG = "annals-of-gritrer"
LONG_PAGE_CHARS = 200_000


def _noise_png(path: Path, seed: int, size: int = 64) -> None:
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size))
    im.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(size * size)])
    im.save(path)


def make_corpus(root: Path) -> Corpus:
    (root / "images").mkdir(parents=True, exist_ok=True)
    pages, images = [], []
    for i, (slug, title, what, look) in enumerate(ENTITIES):
        text = (f"{title} is {what}.\n\nAppearance:\n{look}\n\nImages:\n"
                f"- {title} photo: /img/{slug}-1.png")
        pages.append(Page(f"/page/{slug}", title, text))
        _noise_png(root / "images" / f"{slug}-1.png", seed=i)
        images.append(WorldImage(f"/img/{slug}-1.png", f"{title} (photo 1)", f"/page/{slug}", f"images/{slug}-1.png"))
    # A second photo of the club, a too-small image and a file that is not an image at all.
    _noise_png(root / "images" / "tessel-rovers-2.png", seed=100)
    images.append(WorldImage("/img/tessel-rovers-2.png", "Tessel Rovers (photo 2)", "/page/tessel-rovers",
                             "images/tessel-rovers-2.png"))
    Image.new("RGB", (4, 4), (200, 0, 0)).save(root / "images" / "tiny-badge.png")
    images.append(WorldImage("/img/tiny-badge.png", "Quillon badge tiny", "/page/brimhall", "images/tiny-badge.png"))
    (root / "images" / "broken-badge.png").write_bytes(b"<html>" + b"not an image " * 200 + b"</html>")
    images.append(WorldImage("/img/broken-badge.png", "Quillon badge broken", "/page/brimhall",
                             "images/broken-badge.png"))
    line = "In the year {y} the council of Gritrer met in Brimhall and argued about harbour tolls.\n"
    long_text = "".join(line.format(y=1000 + i) for i in range(LONG_PAGE_CHARS // len(line) + 1))
    pages.append(Page(f"/page/{LONG_SLUG}", "Annals of Gritrer", long_text))
    corpus = Corpus(root, pages, images)
    corpus.save(root)
    return corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return make_corpus(tmp_path_factory.mktemp("world"))


FAST_HTTP = HttpConfig(connect_timeout_s=1.0, read_timeout_s=2.0, deadline_s=5.0, max_attempts=4,
                       backoff_s=0.01, backoff_max_s=0.05)


def http_tools_config(server: WorldServer, image_dir: Path, **overrides) -> ToolsConfig:
    """The HTTP backends pointed at a loopback world server (allow-listed)."""
    values = dict(backend="http", search_base=server.url, search_key_env="", reader_base=f"{server.url}/reader",
                  reader_key_env="", allow=(f"127.0.0.1:{server.port}",), image_dir=str(image_dir), workers=8,
                  http=FAST_HTTP)
    values.update(overrides)
    return ToolsConfig(**values)


@pytest.fixture
def serve(corpus: Corpus) -> Iterator:
    """`serve(*faults, api_key=None)` starts a world server that stops after the test."""
    servers: list[WorldServer] = []

    def start(*faults, api_key: str | None = None, seed: int = 0) -> WorldServer:
        server = WorldServer(corpus, faults, api_key=api_key, seed=seed).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class Connections:
    """Records every address the HTTP stack connects to (patches urllib3's create_connection)."""

    def __init__(self) -> None:
        self.addresses: list[tuple[str, int]] = []
        self._lock = threading.Lock()


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Connections:
    import urllib3.util.connection as connection

    record = Connections()
    real = connection.create_connection

    def create_connection(address, *args, **kwargs):
        with record._lock:
            record.addresses.append((address[0], address[1]))
        return real(address, *args, **kwargs)

    monkeypatch.setattr(connection, "create_connection", create_connection)
    return record
