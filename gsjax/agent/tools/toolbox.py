"""The tools behind one dispatcher, and how a config builds them.

`ToolBox.submit(call, registry)` runs a `ToolCall` on a bounded thread pool and returns a
`Future[ToolResult]`; `ToolBox.run` does the same in the caller's thread. Neither raises: an
unknown tool, bad arguments, a failed backend or a bug in a tool all come back as a result whose
text the policy reads. Every result carries its wall-clock latency.

`build_toolbox(ToolsConfig(...))` wires the backends:
- `backend="local"`: the offline world in process (BM25 search over a Corpus, `world://` URLs);
- `backend="http"`: Serper-compatible search, a Jina-compatible (or direct) reader, and, when
  `summary_base` is set, an OpenAI-compatible summariser, all through one `HttpClient`. Pointing the
  bases at `python -m gsjax.world.serve` (and allow-listing its host:port) runs the offline world
  through the real clients.
API keys are read from the environment variables the config names, at each request.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from gsjax.agent.tools.base import Tool, tool_error
from gsjax.agent.tools.browse import BrowseTool
from gsjax.agent.tools.http import HttpClient, HttpConfig, UrlPolicy
from gsjax.agent.tools.image_search import LOCAL_PATHS, ImageSearchTool
from gsjax.agent.tools.images import HttpImageFetcher
from gsjax.agent.tools.readers import DirectReader, JinaReader
from gsjax.agent.tools.search import SearchTool
from gsjax.agent.tools.serper import SerperSearch
from gsjax.agent.tools.summary import ChatSummariser, ExtractiveSummariser
from gsjax.agent.types import ImageRegistry, ToolCall, ToolResult

log = logging.getLogger(__name__)


class ToolBox:
    def __init__(self, tools: Iterable[Tool], *, workers: int = 32, on_close: Callable[[], None] | None = None) -> None:
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.name in self.tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            self.tools[tool.name] = tool
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tool")
        self._on_close = on_close

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.tools)

    def run(self, call: ToolCall, registry: ImageRegistry) -> ToolResult:
        t0 = time.perf_counter()
        tool = self.tools.get(call.name)
        if tool is None:
            result = ToolResult(
                text=f"Tool {call.name} not found. Available tools: {', '.join(self.tools)}",
                error=f"unknown tool {call.name!r}",
            )
        else:
            try:
                result = tool(call.arguments if isinstance(call.arguments, Mapping) else {}, registry)
                if not isinstance(result, ToolResult):
                    raise TypeError(f"{call.name} returned {type(result).__name__}, not a ToolResult")
            except Exception as e:  # noqa: BLE001 - a tool bug must not end the rollout
                log.exception("tool %s raised %s", call.name, type(e).__name__)
                result = tool_error(f"internal error in {call.name} ({type(e).__name__})")
        result.latency_s = time.perf_counter() - t0
        return result

    def submit(self, call: ToolCall, registry: ImageRegistry) -> concurrent.futures.Future[ToolResult]:
        return self._pool.submit(self.run, call, registry)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> "ToolBox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NoTools:
    """The toolbox of the no-search baseline: every call is answered with a tool error, so the
    policy must answer from what it knows."""

    names = ()

    def run(self, call: ToolCall, registry: ImageRegistry) -> ToolResult:
        return tool_error(f"{call.name} is not available: tools are off in this run (no-search baseline)")

    def submit(self, call: ToolCall, registry: ImageRegistry) -> concurrent.futures.Future[ToolResult]:
        future: concurrent.futures.Future[ToolResult] = concurrent.futures.Future()
        future.set_result(self.run(call, registry))
        return future


@dataclasses.dataclass(frozen=True)
class ToolsConfig:
    backend: str = "local"  # "local" (offline world in process) or "http"
    world_dir: str = ""  # local: a built world folder (or pass `corpus=` to build_toolbox)
    # http backend
    search_base: str = "https://google.serper.dev"
    search_key_env: str = "SERPER_KEY_ID"  # "" = send no key
    search_cache: bool = True  # search replies go to the HTTP disk cache (when http.cache_dir is set)
    reader: str = "jina"  # "jina" (a reader API) or "direct" (fetch the page itself)
    reader_base: str = "https://r.jina.ai"
    reader_key_env: str = "JINA_API_KEYS"
    allow: tuple[str, ...] = ()  # host[:port] the URL policy lets through (e.g. the loopback world)
    # summariser (either backend): "" = none, browse returns the page text
    summary_base: str = ""
    summary_model: str = ""
    summary_key_env: str = ""
    summary_max_tokens: int = 8192
    extractive_sentences: int = 0  # > 0 and no summary_base: browse returns this many matching sentences
    chunk_tokens: int = 95000
    overlap_tokens: int = 1024
    # both
    image_dir: str = ""  # "" = <system temp>/gsjax-images
    image_timeout_s: float = 30.0  # per download
    image_search_budget_s: float = 120.0  # no download starts later than this into a call
    max_images: int = 5  # images attached to one image_search result
    # What image_search shows as each image's local_path: "full" (the cached file's path, as the
    # reference) or "name" (its file name: the work folder's name stays out of the policy's context,
    # docs/training.md, "Where the sampled episodes break").
    local_path: str = "full"
    workers: int = 32  # tool calls running at once (the reference's pool has 128 threads)
    http: HttpConfig = HttpConfig()

    def __post_init__(self) -> None:
        if self.backend not in ("local", "http"):
            raise ValueError(f"ToolsConfig.backend must be 'local' or 'http', got {self.backend!r}")
        if self.reader not in ("jina", "direct"):
            raise ValueError(f"ToolsConfig.reader must be 'jina' or 'direct', got {self.reader!r}")
        if self.local_path not in LOCAL_PATHS:
            raise ValueError(f"ToolsConfig.local_path must be one of {LOCAL_PATHS}, got {self.local_path!r}")
        if self.summary_base and not self.summary_model:
            raise ValueError("ToolsConfig.summary_base is set but summary_model is empty")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ToolsConfig":
        """From a plain mapping (e.g. `ConfigDict.to_dict()`); unknown keys are an error."""
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KeyError(f"ToolsConfig has no field(s) {unknown}; known: {sorted(known)}")
        if isinstance(values.get("http"), Mapping):
            values["http"] = HttpConfig(**values["http"])
        if "allow" in values:
            values["allow"] = tuple(values["allow"])
        return cls(**values)


def tools_config(**overrides: Any):
    """The `tools` block of the training and evaluation configs: every ToolsConfig field (its
    defaults, the reference's endpoints and key variables), `overrides` applied, so any of them can
    be set on the command line (`--config.tools.search_base=...`)."""
    import ml_collections

    values = dataclasses.asdict(ToolsConfig())
    values["allow"] = tuple(values["allow"])
    values.update(overrides)
    return ml_collections.ConfigDict(values)


def build_toolbox(config: ToolsConfig | None = None, corpus: Any = None) -> ToolBox:
    """The three tools for `config`. `corpus` (a `gsjax.world.corpus.Corpus`) overrides
    `world_dir` for the local backend."""
    config = config or ToolsConfig()
    image_dir = Path(config.image_dir or Path(tempfile.gettempdir()) / "gsjax-images")
    client = HttpClient(config.http, UrlPolicy(config.allow))
    summariser = None
    if config.summary_base:
        summariser = ChatSummariser(client, config.summary_base, config.summary_model, config.summary_key_env,
                                    max_tokens=config.summary_max_tokens, chunk_tokens=config.chunk_tokens,
                                    overlap_tokens=config.overlap_tokens)
    elif config.extractive_sentences > 0:
        summariser = ExtractiveSummariser(config.extractive_sentences)
    if config.backend == "local":
        from gsjax.world.corpus import Corpus
        from gsjax.world.index import WorldImageFetcher, WorldIndex, WorldReader

        if corpus is None:
            if not config.world_dir:
                raise ValueError("ToolsConfig.backend='local' needs world_dir (or a corpus)")
            corpus = Corpus.load(Path(config.world_dir))
        index = WorldIndex(corpus)
        tools = [SearchTool(index), ImageSearchTool(index, WorldImageFetcher(corpus), image_dir,
                                                    max_images=config.max_images,
                                                    time_budget_s=config.image_search_budget_s,
                                                    local_path=config.local_path),
                 BrowseTool(WorldReader(corpus), summariser)]
    else:
        search = SerperSearch(client, config.search_base, config.search_key_env, cache=config.search_cache)
        reader = (JinaReader(client, config.reader_base, config.reader_key_env) if config.reader == "jina"
                  else DirectReader(client))
        fetcher = HttpImageFetcher(client, deadline_s=config.image_timeout_s)
        tools = [SearchTool(search), ImageSearchTool(search, fetcher, image_dir, max_images=config.max_images,
                                                     time_budget_s=config.image_search_budget_s,
                                                     local_path=config.local_path),
                 BrowseTool(reader, summariser)]
    return ToolBox(tools, workers=config.workers, on_close=client.close)
