"""The `http` image generator: any server speaking the reference's `POST /generate`.

    gen = HttpGenerator(["http://gpu-0:8000", "http://gpu-1:8000"])  # or HttpGenerator.from_env()
    result = gen.generate(GenRequest(prompt, ref_paths, seed=0), Path("out/sample.png"))

Wire format (reference-spec.md section 3):
- request: `{"image_urls": ["data:image/jpeg;base64,<the file's raw bytes>", ...], "prompt",
  "seed", "true_cfg_scale": 4.0, "negative_prompt": " ", "num_inference_steps": 40,
  "guidance_scale": 1.0, "num_images_per_prompt": 1}`. Like the reference, the data URL says
  image/jpeg whatever the file's format, and the bytes are sent as they are on disk. Which
  references go (the first 3) is decided by `plan_request`, not here.
- reply: `{"success": true, "image": <base64 PNG>}` or `{"success": false, "message": ...}`.

Text-to-image: a request with no references is sent with an empty `image_urls`. The reference's
Qwen-Image-Edit server refuses that (it requires images); point the generator at a server that
also accepts T2I when `plan_request`'s no-reference fallback is in use.

Several servers: each URL has `per_url_concurrency` slots (the reference: 8). A request takes a
slot on the least busy URL, ties broken at random (the reference shuffles its URLs), and waits
while every slot is taken. Timeouts, retries on 429/5xx/connection errors and back-off come from
the project's HTTP client; `timeout_s` bounds one `generate` call from the moment it holds a
slot, retries included. Retries go to the same URL.

Every failure (HTTP error after the retries, timeout, `success: false`, a body that is not JSON,
bad base64, bytes that are not an image, an unreadable reference file) comes back as
`GenResult(None, reason)`; `generate` never raises.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from gsjax.agent.tools.http import HttpClient, HttpConfig, HttpFailure
from gsjax.fileio import atomic_write
from gsjax.rewards.generator import GenRequest, GenResult

log = logging.getLogger(__name__)

URLS_ENV = "QWEN_EDIT_APP_URL"  # a JSON list of server base URLs, as the reference reads it
PATH_ENV = "QWEN_EDIT_APP_PATH"  # the endpoint path on each server (default /generate)


@dataclasses.dataclass(frozen=True)
class EditSettings:
    """The sampling settings sent with every request (the reference's Qwen-Image-Edit values).
    The seed comes from the `GenRequest`."""

    true_cfg_scale: float = 4.0
    negative_prompt: str = " "
    num_inference_steps: int = 40
    guidance_scale: float = 1.0
    num_images_per_prompt: int = 1


def data_url(path: str | Path) -> str:
    """A file's raw bytes as `data:image/jpeg;base64,...` (the reference's label for any format)."""
    return "data:image/jpeg;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def request_body(request: GenRequest, settings: EditSettings = EditSettings()) -> dict[str, Any]:
    """The JSON body of `POST /generate` for `request` (reads the reference files)."""
    return {
        "image_urls": [data_url(p) for p in request.ref_paths],
        "prompt": request.prompt,
        "seed": request.seed,
        **dataclasses.asdict(settings),
    }


def decode_reply(data: Any) -> bytes | str:
    """The image bytes in a `/generate` reply, or why there are none."""
    if not isinstance(data, dict):
        return f"the reply is a JSON {type(data).__name__}, expected an object"
    if data.get("success") is not True:
        message = data.get("message") or data.get("detail") or "no message"
        return f"the server reported a failure: {str(message)[:300]}"
    image = data.get("image")
    if not isinstance(image, str) or not image:
        return 'the reply says success but has no "image" string'
    if image.startswith("data:"):
        image = image.partition(",")[2]
    try:
        raw = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        return 'the reply\'s "image" is not valid base64'
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.verify()
    except Exception:  # PIL raises OSError, SyntaxError, DecompressionBombError...
        return f'the reply\'s "image" decodes to {len(raw)} bytes that are not a readable image'
    return raw


def parse_url_list(raw: str, var: str = URLS_ENV) -> list[str]:
    """Server URLs from an environment value: a JSON list of strings (the reference's format), or
    a comma-separated list."""
    raw = raw.strip()
    if not raw:
        raise ValueError(f"{var} is empty: expected a JSON list of generator server URLs")
    if raw.startswith("["):
        try:
            urls = json.loads(raw)
        except ValueError:
            raise ValueError(f"{var} is not valid JSON: expected a list like [\"http://host:8000\"]") from None
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ValueError(f"{var} must be a JSON list of URL strings")
    else:
        urls = raw.split(",")
    urls = [u.strip() for u in urls if u.strip()]
    if not urls:
        raise ValueError(f"{var} lists no URLs")
    return urls


def _where(url: str) -> str:
    """host:port/path of a URL, for messages (no user info, no query)."""
    parts = urlsplit(url)
    return f"{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"


class _UrlSlots:
    """`per_url` slots on each URL. `acquire` takes one on the least busy URL (ties at random) and
    blocks while all are taken. `max_seen` records each URL's peak, for tests and benchmarks."""

    def __init__(self, urls: Sequence[str], per_url: int, rng: random.Random) -> None:
        self.per_url = per_url
        self.busy = {u: 0 for u in urls}
        self.max_seen = {u: 0 for u in urls}
        self._rng = rng
        self._cond = threading.Condition()

    def acquire(self) -> str:
        with self._cond:
            while True:
                least = min(self.busy.values())
                if least < self.per_url:
                    url = self._rng.choice([u for u, n in self.busy.items() if n == least])
                    self.busy[url] += 1
                    self.max_seen[url] = max(self.max_seen[url], self.busy[url])
                    return url
                self._cond.wait()

    def release(self, url: str) -> None:
        with self._cond:
            self.busy[url] -= 1
            self._cond.notify()


class HttpGenerator:
    """`ImageGenerator` over one or more `/generate` servers (see the module docstring).

    `urls` are server base URLs (`path` is appended unless a URL already ends with it);
    `retries` is how many times a failed attempt (429, 5xx, connection error, timeout) is retried.
    """

    def __init__(
        self,
        urls: Sequence[str],
        per_url_concurrency: int = 8,
        timeout_s: float = 1800.0,
        retries: int = 2,
        *,
        settings: EditSettings = EditSettings(),
        path: str = "/generate",
        max_reply_bytes: int = 256 * 2**20,
        seed: int | None = None,
    ) -> None:
        if not urls:
            raise ValueError("HttpGenerator needs at least one server URL")
        if per_url_concurrency < 1 or retries < 0 or not timeout_s > 0:
            raise ValueError(
                f"HttpGenerator: need per_url_concurrency >= 1, retries >= 0 and timeout_s > 0, got "
                f"{per_url_concurrency}, {retries} and {timeout_s}"
            )
        path = "/" + path.strip("/")
        endpoints = []
        for url in urls:
            parts = urlsplit(url.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"generator server URL {url!r} is not an http(s) URL with a host")
            base = url.strip().rstrip("/")
            endpoints.append(base if base.endswith(path) else base + path)
        if len(set(endpoints)) != len(endpoints):
            raise ValueError(f"generator server URLs repeat: {[_where(e) for e in endpoints]}")
        self.urls = tuple(endpoints)
        self.per_url_concurrency = per_url_concurrency
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.settings = settings
        self.slots = _UrlSlots(self.urls, per_url_concurrency, random.Random(seed))
        self._client = HttpClient(HttpConfig(
            connect_timeout_s=min(10.0, self.timeout_s),
            read_timeout_s=self.timeout_s,  # a server answers only when the image is done
            deadline_s=self.timeout_s,
            max_attempts=retries + 1,
            max_in_flight=len(self.urls) * per_url_concurrency,
            max_body_bytes=max_reply_bytes,
            user_agent="gsjax-rewards/0.1",
        ))

    @classmethod
    def from_env(cls, var: str = URLS_ENV, **kwargs: Any) -> "HttpGenerator":
        """Servers from `$QWEN_EDIT_APP_URL` (a JSON list of URLs) and the endpoint path from
        `$QWEN_EDIT_APP_PATH` when set; other arguments as for the constructor."""
        raw = os.environ.get(var)
        if raw is None:
            raise ValueError(f"the environment variable {var} is not set: expected a JSON list of "
                             "generator server URLs")
        if PATH_ENV in os.environ and "path" not in kwargs:
            kwargs["path"] = os.environ[PATH_ENV]
        return cls(parse_url_list(raw, var), **kwargs)

    def __repr__(self) -> str:
        return (f"HttpGenerator(urls={[_where(u) for u in self.urls]}, per_url_concurrency="
                f"{self.per_url_concurrency}, timeout_s={self.timeout_s:g}, retries={self.retries})")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "HttpGenerator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, request: GenRequest, out_path: Path) -> GenResult:
        start = time.perf_counter()
        try:
            error = self._generate(request, Path(out_path))
        except Exception as e:  # a bug or a surprise: recorded, never raised
            error = f"http generator: {type(e).__name__}: {e}"
        latency = time.perf_counter() - start
        if error is not None:
            log.warning("generation failed after %.1f s: %s", latency, error)
            return GenResult(None, error, latency)
        return GenResult(str(out_path), None, latency)

    def _generate(self, request: GenRequest, out_path: Path) -> str | None:
        try:
            body = request_body(request, self.settings)
        except OSError as e:
            return f"cannot read reference image {e.filename}: {e.strerror or type(e).__name__}"
        url = self.slots.acquire()
        try:
            data = self._client.post(url, json_body=body, trusted=True, deadline_s=self.timeout_s).json()
        except HttpFailure as e:
            return f"generator server: {e}"
        finally:
            self.slots.release(url)
        image = decode_reply(data)
        if isinstance(image, str):
            return f"generator server {_where(url)}: {image}"
        atomic_write(out_path, image)
        return None


