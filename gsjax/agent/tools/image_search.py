"""The `image_search` tool: find images for one query, download and check them, show at most five.

As the reference: the backend is asked for 10 hits; they are downloaded one after another (each
within the fetcher's timeout) until min(top_k, 20) images are good; if fewer are, it is asked again
for 20 hits and the hits not tried yet are downloaded. Unlike the reference, no download starts
after `time_budget_s` seconds (30 slow downloads would otherwise hold a call for 15 minutes).
The first min(top_k, max_images) good images, in hit order, are registered in the trajectory's
`ImageRegistry` (ids persist across searches; the same image keeps its id) and attached to the
result. A registry belongs to one trajectory, whose calls run one at a time.

Observation (the reference agent's re-rendering):

    --- image search result for [<query>] ---
    IMG_001: title: <title>
      url: <image url>
      local_path: <cache_dir/md5(url).jpg>   (with local_path="name": <md5(url).jpg>)
      page_url: <page url>            (left out when the hit has none)
    --- end of image search result ---

No good image: the header and footer only. A failed search: `[Tool Error]: <reason>`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gsjax.agent.tools.base import ImageFetcher, ImageHit, ImageSearch, ToolFailure, read_str, read_top_k, tool_error
from gsjax.agent.tools.images import MIN_IMAGE_BYTES, cache_path, is_valid_image_file, store_image
from gsjax.agent.types import ImageRef, ImageRegistry, ToolResult

log = logging.getLogger(__name__)

FIRST_NUM = 10
RETRY_NUM = 20


LOCAL_PATHS = ("full", "name")


def render_image_search(query: str, refs: list[ImageRef], local_path: str = "full") -> str:
    """`local_path` "full" shows each image's cached path as stored (the reference); "name" its file
    name only, so that nothing of the work folder's name reaches the policy's context."""
    if local_path not in LOCAL_PATHS:
        raise ValueError(f"local_path must be one of {LOCAL_PATHS}, got {local_path!r}")
    lines = [f"--- image search result for [{query}] ---"]
    for ref in refs:
        lines.append(f"{ref.img_id}: title: {ref.title}")
        lines.append(f"  url: {ref.url}")
        lines.append(f"  local_path: {ref.path if local_path == 'full' else Path(ref.path).name}")
        if ref.page_url:
            lines.append(f"  page_url: {ref.page_url}")
    lines.append("--- end of image search result ---")
    return "\n".join(lines)


class ImageSearchTool:
    name = "image_search"

    def __init__(
        self,
        backend: ImageSearch,
        fetcher: ImageFetcher,
        cache_dir: str | Path,
        *,
        max_images: int = 5,
        min_bytes: int = MIN_IMAGE_BYTES,
        time_budget_s: float = 120.0,
        local_path: str = "full",
    ) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        if local_path not in LOCAL_PATHS:
            raise ValueError(f"local_path must be one of {LOCAL_PATHS}, got {local_path!r}")
        self.local_path = local_path
        self.backend = backend
        self.fetcher = fetcher
        self.cache_dir = Path(cache_dir)
        self.max_images = max_images
        self.min_bytes = min_bytes
        self.time_budget_s = time_budget_s

    def __call__(self, arguments: Mapping[str, Any], registry: ImageRegistry) -> ToolResult:
        try:
            query = read_str(arguments, "query")
            top_k = read_top_k(arguments)
            hits = self.backend.search_images(query, FIRST_NUM)
        except ToolFailure as e:
            return tool_error(str(e))
        want = min(top_k, RETRY_NUM)
        tried: set[str] = set()
        stop_at = time.monotonic() + self.time_budget_s
        good = self._download(hits, want, tried, stop_at)
        if len(good) < want and time.monotonic() < stop_at:
            try:
                more = self.backend.search_images(query, RETRY_NUM)
            except ToolFailure as e:
                log.info("image_search retry with %d hits failed: %s", RETRY_NUM, e)
                more = []
            good += self._download(more, want - len(good), tried, stop_at)
        refs: list[ImageRef] = []
        for hit, path in good[: min(want, self.max_images)]:
            ref = registry.register(str(path), hit.image_url, hit.title, hit.page_url)
            if ref not in refs:
                refs.append(ref)
        return ToolResult(render_image_search(query, refs, self.local_path), images=refs)

    def _download(self, hits: list[ImageHit], want: int, tried: set[str],
                  stop_at: float) -> list[tuple[ImageHit, Path]]:
        good: list[tuple[ImageHit, Path]] = []
        for hit in hits:
            if len(good) >= want or time.monotonic() >= stop_at:
                break
            if not hit.image_url or hit.image_url in tried:
                continue
            tried.add(hit.image_url)
            path = cache_path(self.cache_dir, hit.image_url)
            if not is_valid_image_file(path, min_bytes=1):
                try:
                    store_image(self.fetcher.fetch(hit.image_url), path, self.min_bytes)
                except ToolFailure as e:
                    log.info("image rejected: %s", e)
                    continue
            good.append((hit, path))
        return good
