"""The three tools and the ToolBox on the offline world in process (and on fixed fake backends,
where a test pins an exact observation)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from gsjax.agent.tools import BrowseTool, ImageHit, ImageSearchTool, SearchHit, SearchTool, ToolBox, ToolFailure
from gsjax.agent.tools import ToolsConfig, build_toolbox
from gsjax.agent.tools.base import FetchedImage
from gsjax.agent.tools.images import cache_path
from gsjax.agent.tools.summary import split_chunks
from gsjax.agent.types import ImageRegistry, ToolCall, ToolResult
from gsjax.world.index import WorldImageFetcher, WorldIndex, WorldReader, tokenize
from test_tools_support import LONG_SLUG, corpus  # noqa: F401 - a fixture

# ---------------------------------------------------------------------------------------------
# Fixed fakes: the exact observation for known hits.


class FakeSearch:
    def __init__(self, hits: dict[str, list[SearchHit]] | None = None, fail: set[str] = frozenset()):
        self.hits, self.fail, self.calls = hits or {}, fail, []

    def search(self, query: str, num: int) -> list[SearchHit]:
        self.calls.append((query, num))
        if query in self.fail:
            raise ToolFailure("HTTP 500 from api/search (5 attempts)")
        return self.hits.get(query, [])[:num]


def test_search_observation_is_the_reference_format():
    backend = FakeSearch({"tessel rovers": [SearchHit("Tessel Rovers", "https://a.example/tr", "A club."),
                                            SearchHit("Glimmer Cup", "https://a.example/gc", "A trophy.")]})
    result = SearchTool(backend)({"queries": ["tessel rovers", "nothing here"]}, ImageRegistry())
    assert result.error is None and result.images == []
    assert result.text == (
        "--- search result for [tessel rovers] ---\n"
        "[Tessel Rovers](https://a.example/tr) A club.\n"
        "\n"
        "[Glimmer Cup](https://a.example/gc) A trophy.\n"
        "--- end of search result ---\n"
        "\n"
        "--- search result for [nothing here] ---\n"
        "No results for 'nothing here'.\n"
        "--- end of search result ---"
    )
    assert backend.calls == [("tessel rovers", 10), ("nothing here", 10)]  # one after another, top_k 10


def test_search_strips_quotes_before_sending_and_shows_the_query_as_written():
    backend = FakeSearch()
    result = SearchTool(backend)({"queries": ['"Tessel Rovers" \'emblem\'']}, ImageRegistry())
    assert backend.calls == [("Tessel Rovers emblem", 10)]
    assert result.text.startswith(
        "--- search result for [\"Tessel Rovers\" 'emblem'] ---\nNo results for 'Tessel Rovers emblem'.")


@pytest.mark.parametrize("top_k, sent", [(None, 10), (0, 1), (-3, 1), (3, 3), ("4", 4), (50, 10), (10.7, 10)])
def test_search_top_k_is_clamped_to_1_10(top_k, sent):
    backend = FakeSearch()
    args = {"queries": ["q"]} if top_k is None else {"queries": ["q"], "top_k": top_k}
    SearchTool(backend)(args, ImageRegistry())
    assert backend.calls == [("q", sent)]


def test_search_failure_of_every_query_is_a_tool_error_and_of_one_is_inline():
    backend = FakeSearch({"ok": [SearchHit("T", "L", "S")]}, fail={"bad"})
    all_bad = SearchTool(backend)({"queries": ["bad"]}, ImageRegistry())
    assert all_bad.text == "[Tool Error]: HTTP 500 from api/search (5 attempts)"
    assert all_bad.error == "HTTP 500 from api/search (5 attempts)"
    mixed = SearchTool(backend)({"queries": ["ok", "bad"]}, ImageRegistry())
    assert mixed.error is None
    assert mixed.text.endswith("--- search result for [bad] ---\n[Tool Error]: HTTP 500 from api/search "
                               "(5 attempts)\n--- end of search result ---")


@pytest.mark.parametrize(
    "args", [{}, {"queries": []}, {"queries": [""]}, {"queries": 3}, {"queries": ["q"], "top_k": "x"}])
def test_search_bad_arguments_are_a_tool_error(args):
    result = SearchTool(FakeSearch())(args, ImageRegistry())
    assert result.text.startswith("[Tool Error]: ") and result.error


# ---------------------------------------------------------------------------------------------
# The offline world's index


def test_world_search_finds_the_page_by_title_and_text(corpus):
    index = WorldIndex(corpus)
    hits = index.search("Tessel Rovers emblem", 10)
    assert hits[0] == SearchHit("Tessel Rovers", "world:///page/tessel-rovers",
                                "The emblem of the Tessel Rovers is a green shield with a white fox.")
    assert index.search("lighthouse", 3)[0].link == "world:///page/noprage-bay"
    assert len(index.search("Tessel Rovers", 2)) == 2
    assert index.search("zzzz qqqq", 10) == [] and index.search("the of", 10) == []  # no match, only stop words


def test_world_image_search_uses_image_and_page_titles(corpus):
    hits = WorldIndex(corpus).search_images("Tessel Rovers", 10)
    assert [h.image_url for h in hits[:2]] == ["world:///img/tessel-rovers-1.png", "world:///img/tessel-rovers-2.png"]
    assert hits[0] == ImageHit("Tessel Rovers (photo 1)", "world:///img/tessel-rovers-1.png",
                               "world:///page/tessel-rovers")
    # "fox" is only in the page's text: the page's first lines count for its images.
    assert WorldIndex(corpus).search_images("white fox", 10)[0].page_url == "world:///page/tessel-rovers"


def test_tokenize_drops_stop_words_and_keeps_numbers():
    assert tokenize("The 2031 Glimmer-Cup, of Brimhall!") == ["2031", "glimmer", "cup", "brimhall"]


def test_world_reader_and_fetcher_only_touch_corpus_entries(corpus):
    reader = WorldReader(corpus)
    text = reader.read("world:///page/orrin-tower")
    assert text.startswith("Title: Orrin Tower\n\nURL Source: world:///page/orrin-tower\n\nMarkdown Content:\n")
    assert "golden clock face" in text
    # Any spelling of the title names the page, as on Wikipedia; the URL shown is the one asked for.
    for spelling in ["Orrin Tower", "Orrin_Tower", "orrin%20tower", "ORRIN-TOWER?x=1", "Orrin Tower#top"]:
        text = reader.read(f"world:///page/{spelling}")
        assert text.startswith(f"Title: Orrin Tower\n\nURL Source: world:///page/{spelling}\n"), spelling
    for url in ["world:///page/nope", "file:///etc/passwd", "http://127.0.0.1/page/orrin-tower",
                "world:///../corpus.json", "world:///page/../corpus.json", "world:///page/Orrin", "world:///orrin-tower"]:
        with pytest.raises(ToolFailure):
            reader.read(url)
    fetcher = WorldImageFetcher(corpus)
    got = fetcher.fetch("world:///img/lumen-moth-1.png")
    assert got.content_type == "image/png" and got.data == (corpus.root / "images/lumen-moth-1.png").read_bytes()
    for url in ["world:///img/nope.png", "world:///corpus.json", "world:///img/../corpus.json"]:
        with pytest.raises(ToolFailure):
            fetcher.fetch(url)


# ---------------------------------------------------------------------------------------------
# image_search


def local_tools(corpus, tmp_path: Path, **kw) -> ToolBox:
    return build_toolbox(ToolsConfig(image_dir=str(tmp_path / "images"), workers=4, **kw), corpus=corpus)


def test_image_search_observation_registers_and_attaches_images(corpus, tmp_path):
    registry = ImageRegistry()
    with local_tools(corpus, tmp_path) as tools:
        result = tools.run(ToolCall("image_search", {"query": "Tessel Rovers", "top_k": 2}), registry)
    first, second = result.images
    assert result.error is None
    assert result.text == (
        "--- image search result for [Tessel Rovers] ---\n"
        f"IMG_001: title: Tessel Rovers (photo 1)\n"
        f"  url: world:///img/tessel-rovers-1.png\n"
        f"  local_path: {first.path}\n"
        f"  page_url: world:///page/tessel-rovers\n"
        f"IMG_002: title: Tessel Rovers (photo 2)\n"
        f"  url: world:///img/tessel-rovers-2.png\n"
        f"  local_path: {second.path}\n"
        f"  page_url: world:///page/tessel-rovers\n"
        "--- end of image search result ---"
    )
    assert Path(first.path) == cache_path(tmp_path / "images", "world:///img/tessel-rovers-1.png")
    with Image.open(first.path) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
    assert registry.all() == [first, second]


def test_image_ids_persist_across_searches_in_one_trajectory(corpus, tmp_path):
    registry = ImageRegistry()
    with local_tools(corpus, tmp_path) as tools:
        one = tools.run(ToolCall("image_search", {"query": "Tessel Rovers", "top_k": 1}), registry)
        two = tools.run(ToolCall("image_search", {"query": "Lumen Moth", "top_k": 1}), registry)
        three = tools.run(ToolCall("image_search", {"query": "Tessel Rovers", "top_k": 2}), registry)
        other = tools.run(ToolCall("image_search", {"query": "Lumen Moth", "top_k": 1}), ImageRegistry())
    assert [r.img_id for r in one.images] == ["IMG_001"]
    assert [r.img_id for r in two.images] == ["IMG_002"]
    assert [r.img_id for r in three.images] == ["IMG_001", "IMG_003"]  # the same photo keeps its id
    assert "IMG_001: title: Tessel Rovers (photo 1)" in three.text
    assert "IMG_003: title: Tessel Rovers (photo 2)" in three.text
    assert [r.img_id for r in other.images] == ["IMG_001"]  # ids are per trajectory
    assert len(registry) == 3


def test_image_search_shows_at_most_five_images(corpus, tmp_path):
    with local_tools(corpus, tmp_path) as tools:
        result = tools.run(ToolCall("image_search", {"query": "photo 1", "top_k": 10}), ImageRegistry())
    assert len(result.images) == 5 and result.text.count("  local_path: ") == 5
    with local_tools(corpus, tmp_path, max_images=2) as tools:
        assert len(tools.run(ToolCall("image_search", {"query": "photo 1"}), ImageRegistry()).images) == 2


def test_image_search_rejects_tiny_files_and_non_images_leaving_header_and_footer(corpus, tmp_path):
    with local_tools(corpus, tmp_path) as tools:
        result = tools.run(ToolCall("image_search", {"query": "Quillon badge"}), ImageRegistry())
    assert result.error is None and result.images == []
    assert result.text == "--- image search result for [Quillon badge] ---\n--- end of image search result ---"
    assert not list((tmp_path / "images").glob("*.jpg"))


class CountingImages:
    """Ten hits of which only `good` download; asked again for 20, five more good ones."""

    def __init__(self, good: int):
        self.good, self.calls, self.fetched = good, [], []

    def search_images(self, query, num):
        self.calls.append(num)
        return [ImageHit(f"t{i}", f"u{i}", f"p{i}") for i in range(num)]

    def fetch(self, url):
        self.fetched.append(url)
        i = int(url[1:])
        ok = i < self.good or i >= 10
        buf = __import__("io").BytesIO()
        Image.effect_noise((48, 48), 50).convert("RGB").save(buf, "PNG")
        return FetchedImage(buf.getvalue() if ok else b"junk" * 400, "image/png")


def test_image_search_asks_for_20_when_too_few_of_10_download(tmp_path):
    backend = CountingImages(good=2)
    tool = ImageSearchTool(backend, backend, tmp_path)
    result = tool({"query": "q", "top_k": 4}, ImageRegistry())
    assert backend.calls == [10, 20]
    assert [r.url for r in result.images] == ["u0", "u1", "u10", "u11"]
    assert backend.fetched == [f"u{i}" for i in range(12)]  # serial, in order, each URL once
    enough = CountingImages(good=10)
    result = ImageSearchTool(enough, enough, tmp_path / "b")({"query": "q", "top_k": 3}, ImageRegistry())
    assert enough.calls == [10] and enough.fetched == ["u0", "u1", "u2"] and len(result.images) == 3


def test_image_search_reuses_cached_files_without_downloading(tmp_path):
    backend = CountingImages(good=10)
    ImageSearchTool(backend, backend, tmp_path)({"query": "q", "top_k": 2}, ImageRegistry())
    backend.fetched.clear()
    result = ImageSearchTool(backend, backend, tmp_path)({"query": "q", "top_k": 2}, ImageRegistry())
    assert backend.fetched == [] and len(result.images) == 2


def test_image_search_shows_the_full_cached_path_or_only_its_file_name(tmp_path):
    backend = CountingImages(good=10)
    folder = tmp_path / "eval32_t0.6" / "tool_images"
    full = ImageSearchTool(backend, backend, folder)({"query": "q", "top_k": 1}, ImageRegistry())
    name = ImageSearchTool(backend, backend, folder, local_path="name")({"query": "q", "top_k": 1}, ImageRegistry())
    path = full.images[0].path
    assert Path(path).parent == folder and name.images[0].path == path  # the same file either way
    assert f"  local_path: {path}\n" in full.text
    assert f"  local_path: {Path(path).name}\n" in name.text and "eval32_t0.6" not in name.text
    with pytest.raises(ValueError, match="local_path must be one of"):
        ImageSearchTool(backend, backend, folder, local_path="relative")
    with pytest.raises(ValueError, match="ToolsConfig.local_path must be one of"):
        ToolsConfig(local_path="relative")


def test_image_search_starts_no_download_after_its_time_budget(tmp_path):
    class Slow(CountingImages):
        def fetch(self, url):
            time.sleep(0.05)
            return super().fetch(url)

    backend = Slow(good=10)
    result = ImageSearchTool(backend, backend, tmp_path, time_budget_s=0.12)({"query": "q"}, ImageRegistry())
    assert len(backend.fetched) == 3 and len(result.images) == 3 and backend.calls == [10]


# ---------------------------------------------------------------------------------------------
# browse


class FakeSummariser:
    def __init__(self):
        self.calls = []

    def summarise(self, text, query):
        self.calls.append((text, query))
        return f"summary of {len(text)} chars for {query}"


def test_browse_returns_the_page_text_without_a_summariser(corpus, tmp_path):
    with local_tools(corpus, tmp_path) as tools:
        result = tools.run(ToolCall("browse", {"url": "world:///page/lumen-moth", "query": "wings"}), ImageRegistry())
    assert result.error is None
    assert result.text == ("Title: Lumen Moth\n\nURL Source: world:///page/lumen-moth\n\nMarkdown Content:\n"
                           + next(p.text for p in corpus.pages if p.path == "/page/lumen-moth"))


def test_browse_cuts_raw_text_at_120k_characters(corpus):
    result = BrowseTool(WorldReader(corpus))({"url": f"world:///page/{LONG_SLUG}", "query": "tolls"}, ImageRegistry())
    assert len(result.text) == 120_000 + 3 and result.text.endswith("...")


def test_browse_with_a_summariser_and_several_urls(corpus):
    summariser = FakeSummariser()
    tool = BrowseTool(WorldReader(corpus), summariser)
    result = tool({"url": ["world:///page/lumen-moth", "world:///page/missing", "world:///page/brimhall"],
                   "goal": "colours"}, ImageRegistry())
    parts = result.text.split("\n\n=======\n\n")
    assert len(parts) == 3 and result.error is None
    assert parts[0].startswith("summary of ") and parts[0].endswith(" chars for colours")
    assert parts[1] == "[Tool Error]: no page at world:///page/missing"
    assert [q for _, q in summariser.calls] == ["colours", "colours"]


def test_browse_keeps_at_most_five_urls(corpus):
    summariser = FakeSummariser()
    BrowseTool(WorldReader(corpus), summariser)({"url": ["world:///page/brimhall"] * 7, "query": "q"}, ImageRegistry())
    assert len(summariser.calls) == 5


def test_browse_without_a_query_asks_for_a_summary(corpus):
    summariser = FakeSummariser()
    BrowseTool(WorldReader(corpus), summariser)({"url": "world:///page/brimhall"}, ImageRegistry())
    assert summariser.calls[0][1] == "Detailed summary of the page."


@pytest.mark.parametrize("url", ["file:///etc/passwd", "http://127.0.0.1:8080/page/brimhall", "world:///page/nope"])
def test_browse_of_what_the_world_does_not_hold_is_a_tool_error(corpus, url):
    result = BrowseTool(WorldReader(corpus))({"url": url, "query": "q"}, ImageRegistry())
    assert result.text.startswith("[Tool Error]: ") and result.error


def test_split_chunks_covers_the_text_with_overlap_and_within_budget():
    text = "".join(chr(65 + i % 26) for i in range(10_000))
    chunks = split_chunks(text, chunk_tokens=500, overlap_tokens=50)  # 2000 chars, 200 overlap
    assert len(chunks) == 6 and all(len(c) <= 2000 for c in chunks)
    step = len(chunks[0]) - 200
    for i, c in enumerate(chunks):
        assert text[i * step: i * step + len(c)] == c
    assert chunks[-1].endswith(text[-10:]) and chunks[1].startswith(chunks[0][-200:])
    assert split_chunks("short", 500, 50) == ["short"]
    with pytest.raises(ValueError):
        split_chunks(text, 50, 50)


# ---------------------------------------------------------------------------------------------
# ToolBox


def test_unknown_tool_names_the_tools():
    result = ToolBox([SearchTool(FakeSearch())]).run(ToolCall("draw", {}), ImageRegistry())
    assert result.text == "Tool draw not found. Available tools: search"
    assert result.error == "unknown tool 'draw'"


def test_a_tool_that_raises_becomes_a_tool_error():
    class Broken:
        name = "search"

        def __call__(self, arguments, registry):
            raise KeyError("oops")

    result = ToolBox([Broken()]).run(ToolCall("search", {"queries": ["q"]}), ImageRegistry())
    assert result.text == "[Tool Error]: internal error in search (KeyError)"


def test_submit_runs_calls_on_the_pool_and_records_latency():
    running, peak, lock = [0], [0], threading.Lock()

    class Slow:
        name = "search"

        def __call__(self, arguments, registry):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.2)
            with lock:
                running[0] -= 1
            return ToolResult("done")

    with ToolBox([Slow()], workers=4) as tools:
        t0 = time.perf_counter()
        futures = [tools.submit(ToolCall("search", {}), ImageRegistry()) for _ in range(8)]
        results = [f.result(timeout=5) for f in futures]
        elapsed = time.perf_counter() - t0
    assert peak[0] == 4 and 0.35 < elapsed < 1.2  # two waves of four
    assert all(r.text == "done" and 0.19 < r.latency_s < 1.0 for r in results)


def test_tools_config_from_a_mapping():
    cfg = ToolsConfig.from_dict({"backend": "http", "allow": ["127.0.0.1:8080"], "http": {"max_in_flight": 4}})
    assert cfg.allow == ("127.0.0.1:8080",) and cfg.http.max_in_flight == 4
    with pytest.raises(KeyError):
        ToolsConfig.from_dict({"backnd": "http"})
    with pytest.raises(ValueError):
        ToolsConfig(backend="web")
