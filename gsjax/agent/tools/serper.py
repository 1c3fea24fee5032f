"""Serper-compatible web and image search: `POST {base}/search` and `POST {base}/images` with
body `{"q", "num"}` and the key in the `X-API-KEY` header.

Replies: `{"organic": [{"title", "link", "snippet"}, ...]}` and
`{"images": [{"title", "imageUrl", "link"}, ...]}`. A 200 reply that carries only an error
(`{"message": ...}`, as Serper sends for a bad key or exhausted credit) is a failure.
"""

from __future__ import annotations

import os
from typing import Any

from gsjax.agent.tools.base import ImageHit, SearchHit, ToolFailure, clean_markup
from gsjax.agent.tools.http import HttpClient


def api_key(env_var: str) -> str | None:
    """None when no variable is named, else the value of `env_var` (which must be set)."""
    if not env_var:
        return None
    value = os.environ.get(env_var, "").strip()
    if not value:
        raise ToolFailure(f"the environment variable {env_var} (API key) is not set")
    return value


class SerperSearch:
    """Text and image search against a Serper-compatible API (the key is read from the
    environment at each call, so this object never holds it)."""

    def __init__(self, client: HttpClient, base: str, key_env: str = "SERPER_KEY_ID", *, cache: bool = True) -> None:
        self.client = client
        self.base = base.rstrip("/")
        self.key_env = key_env
        self.cache = cache

    def __repr__(self) -> str:
        return f"SerperSearch(base={self.base!r}, key_env={self.key_env!r})"

    def _post(self, endpoint: str, query: str, num: int) -> dict[str, Any]:
        key = api_key(self.key_env)
        headers = {"X-API-KEY": key} if key else {}
        resp = self.client.post(f"{self.base}/{endpoint}", headers=headers, json_body={"q": query, "num": num},
                                trusted=True, cache=self.cache)
        data = resp.json()
        if not isinstance(data, dict):
            raise ToolFailure(f"the search API sent a JSON {type(data).__name__}, expected an object")
        return data

    def search(self, query: str, num: int) -> list[SearchHit]:
        data = self._post("search", query, num)
        organic = data.get("organic")
        if organic is None:
            self._raise_api_error(data)
            organic = []
        if not isinstance(organic, list):
            raise ToolFailure('the search API sent "organic" that is not a list')
        hits = []
        for item in organic[:num]:
            if isinstance(item, dict):
                hits.append(SearchHit(clean_markup(str(item.get("title") or "")), str(item.get("link") or ""),
                                      clean_markup(str(item.get("snippet") or ""))))
        return hits

    def search_images(self, query: str, num: int) -> list[ImageHit]:
        data = self._post("images", query, num)
        images = data.get("images")
        if images is None:
            self._raise_api_error(data)
            images = []
        if not isinstance(images, list):
            raise ToolFailure('the image search API sent "images" that is not a list')
        hits = []
        for item in images[:num]:
            if not isinstance(item, dict):
                continue
            image_url = str(item.get("imageUrl") or item.get("thumbnailUrl") or "")
            if image_url:
                title = clean_markup(str(item.get("title") or item.get("source") or "").strip()) or "image"
                hits.append(ImageHit(title, image_url, str(item.get("link") or "")))
        return hits

    def _raise_api_error(self, data: dict[str, Any]) -> None:
        message = data.get("message") or data.get("error")
        if message:
            reason = f"the search API answered with an error: {str(message)[:200]}"
            raise ToolFailure(self.client.redact(reason))
