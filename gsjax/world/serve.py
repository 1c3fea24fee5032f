"""Serve a world's corpus over loopback with Serper/Jina-compatible endpoints, with fault injection.

    python -m gsjax.world.serve --world runs/world [--port 0] [--faults SPEC] [--key-env VAR] [--seed 0]

prints its URL (`http://127.0.0.1:PORT`) on stdout and serves until interrupted. Endpoints:

    POST /search      {"q", "num"} -> {"organic": [{"title", "link", "snippet", "position"}]}
    POST /images      {"q", "num"} -> {"images": [{"title", "imageUrl", "link", "position"}]}
    GET  /reader/<url>   the text of a page of this server (what a Jina reader returns)
    GET  /page/<slug>    the page as HTML
    GET  /img/<file>     the image file

Links point at the server itself. With `--key-env VAR` and VAR set, /search and /images require
`X-API-KEY: $VAR` (403 otherwise). In tests: `url, stop = start_server(corpus, faults)`, or
`WorldServer` for its request counts.

Faults, each for requests whose path starts with a prefix, in `--faults` as
`PREFIX:KIND[=VALUE][,first=N][,rate=P][,retry_after=S]` joined by `;`, e.g.
`/:latency=0.2;/search:status=429,first=3;/reader:huge=50000000;/img:redirect=http://10.0.0.1/`.

    latency=S     wait S seconds, then answer normally (every matching latency fault adds up)
    status=CODE   answer CODE with a JSON error body (and Retry-After if given)
    stall=S       wait S seconds before answering (longer than a client's timeout)
    malformed     answer 200 with JSON that does not parse
    huge=BYTES    answer 200 with a text body of BYTES bytes, streamed
    not_image     answer 200 with `Content-Type: image/png` and an HTML body
    redirect=URL  answer 302 to URL (the server never connects anywhere itself)

`first=N` limits a fault to the first N matching requests, `rate=P` fires it with probability P
(drawn from a generator seeded by `--seed`). The first answering fault that fires wins.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hmac
import html
import json
import logging
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from gsjax.fileio import BackgroundServer
from gsjax.world.corpus import Corpus
from gsjax.world.index import WorldIndex, render_page_text

log = logging.getLogger(__name__)

FAULT_KINDS = ("latency", "status", "stall", "malformed", "huge", "not_image", "redirect")
_VALUE_FIELD = {"latency": "seconds", "stall": "seconds", "status": "status", "huge": "size", "redirect": "location"}
MAX_REQUEST_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Fault:
    prefix: str
    kind: str
    seconds: float = 0.2  # latency, stall
    status: int = 500  # status
    size: int = 50_000_000  # huge
    location: str = "http://10.0.0.1/"  # redirect
    first: int = 0  # only the first N matching requests (0 = all)
    rate: float = 1.0  # probability of firing
    retry_after: float | None = None  # status: send a Retry-After header

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {self.kind!r} is not one of {FAULT_KINDS}")
        if not self.prefix.startswith("/"):
            raise ValueError(f"fault prefix {self.prefix!r} must start with '/'")
        if self.seconds < 0 or self.size < 0 or self.first < 0 or not 0 <= self.rate <= 1:
            raise ValueError(f"fault {self}: seconds, size and first must be >= 0 and rate in [0, 1]")
        if self.kind == "status" and not 100 <= self.status <= 599:
            raise ValueError(f"fault status {self.status} is not an HTTP status")


def parse_faults(spec: str) -> list[Fault]:
    """`PREFIX:KIND[=VALUE][,first=N][,rate=P][,retry_after=S]` rules joined by `;`."""
    faults = []
    for rule in filter(None, (r.strip() for r in spec.split(";"))):
        prefix, sep, rest = rule.partition(":")
        if not sep:
            raise ValueError(f"fault rule {rule!r}: expected PREFIX:KIND[=VALUE][,option=value...]")
        head, *options = rest.split(",")
        kind, _, value = head.partition("=")
        kwargs: dict[str, Any] = {}
        try:
            if value:
                field = _VALUE_FIELD.get(kind)
                if field is None:
                    raise ValueError(f"{kind} takes no value")
                kwargs[field] = {"seconds": float, "status": int, "size": int, "location": str}[field](value)
            for option in options:
                key, _, v = option.partition("=")
                key = key.strip()
                if key not in ("first", "rate", "retry_after"):
                    raise ValueError(f"unknown option {key!r} (expected first, rate or retry_after)")
                kwargs[key] = int(v) if key == "first" else float(v)
            faults.append(Fault(prefix.strip(), kind.strip(), **kwargs))
        except (TypeError, ValueError) as e:
            raise ValueError(f"fault rule {rule!r}: {e}") from None
    return faults


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # many clients connect at once in benchmarks
    world: "WorldServer"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.world.handle(self, "GET")

    def do_POST(self) -> None:  # noqa: N802
        self.server.world.handle(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


class WorldServer(BackgroundServer):
    """The corpus over HTTP on 127.0.0.1. `hits` counts requests by their first path segment
    (`/search`, `/images`, `/reader`, `/page`, `/img`)."""

    def __init__(self, corpus: Corpus, faults: Iterable[Fault] = (), *, port: int = 0,
                 api_key: str | None = None, seed: int = 0) -> None:
        self.corpus = corpus
        self.faults = list(faults)
        self.api_key = api_key or None
        self.hits: collections.Counter[str] = collections.Counter()
        self._seen = [0] * len(self.faults)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._http = _HTTPServer(("127.0.0.1", port), _Handler)
        self._http.world = self
        self.port = self._http.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.index = WorldIndex(corpus, base=self.url)
        self._images = {i.path: i for i in corpus.images}

    def __repr__(self) -> str:
        return f"WorldServer(url={self.url!r}, faults={len(self.faults)}, key={'set' if self.api_key else 'none'})"

    # ------------------------------------------------------------------------- requests

    def handle(self, h: _Handler, method: str) -> None:
        try:
            self._handle(h, method)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            h.close_connection = True  # the client went away (a timeout, or it stopped reading)

    def _handle(self, h: _Handler, method: str) -> None:
        try:
            length = int(h.headers.get("Content-Length") or 0)
        except ValueError:
            return self._json(h, 400, {"message": "bad Content-Length"}, close=True)
        if length > MAX_REQUEST_BYTES or length < 0:
            return self._json(h, 413, {"message": "request too large"}, close=True)
        body = h.rfile.read(length) if length else b""
        target = h.path
        with self._lock:
            self.hits["/" + target.lstrip("/").split("/", 1)[0].split("?", 1)[0]] += 1
        answer = self._faults(target)
        if answer is not None and self._fault_answer(h, answer):
            return
        route = target.split("?", 1)[0]
        if method == "POST" and route in ("/search", "/images"):
            return self._search(h, route, body)
        if method == "GET" and target.startswith("/reader/"):
            return self._reader(h, target[len("/reader/"):])
        if method == "GET" and route.startswith("/page/"):
            return self._page(h, route)
        if method == "GET" and route.startswith("/img/"):
            return self._image(h, unquote(route))
        self._json(h, 404, {"message": f"no route for {method} {route[:100]}"})

    def _faults(self, target: str) -> Fault | None:
        delay, answer = 0.0, None
        with self._lock:
            for i, fault in enumerate(self.faults):
                if not target.startswith(fault.prefix):
                    continue
                self._seen[i] += 1
                fires = (not fault.first or self._seen[i] <= fault.first) and (
                    fault.rate >= 1 or self._rng.random() < fault.rate)
                if not fires:
                    continue
                if fault.kind == "latency":
                    delay += fault.seconds
                elif answer is None:
                    answer = fault
        if delay:
            time.sleep(delay)
        return answer

    def _fault_answer(self, h: _Handler, fault: Fault) -> bool:
        """Answer as the fault says; False when the request should then be served normally."""
        if fault.kind == "stall":
            time.sleep(fault.seconds)
            return False
        if fault.kind == "status":
            extra = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            self._json(h, fault.status, {"message": f"injected HTTP {fault.status}"}, headers=extra)
        elif fault.kind == "malformed":
            self._send(h, 200, "application/json", b'{"organic": [{"title": "broken", "link": ')
        elif fault.kind == "not_image":
            junk = b"<html><body>" + b"<p>this is a web page, not a picture</p>" * 100 + b"</body></html>"
            self._send(h, 200, "image/png", junk)
        elif fault.kind == "redirect":
            self._send(h, 302, "text/plain", b"moved", headers={"Location": fault.location})
        elif fault.kind == "huge":
            self._stream_filler(h, fault.size)
        return True

    def _authorised(self, h: _Handler) -> bool:
        if self.api_key is None:
            return True
        given = h.headers.get("X-API-KEY", "")
        return hmac.compare_digest(given.encode(), self.api_key.encode())

    def _search(self, h: _Handler, route: str, body: bytes) -> None:
        if not self._authorised(h):
            return self._json(h, 403, {"message": "Unauthorized."})
        try:
            request = json.loads(body or b"{}")
            query = str(request.get("q", ""))
            num = max(1, min(100, int(request.get("num", 10))))
        except (ValueError, TypeError, AttributeError):
            return self._json(h, 400, {"message": 'expected a JSON body {"q": str, "num": int}'})
        params = {"q": query, "num": num, "type": route[1:]}
        if route == "/search":
            hits = self.index.search(query, num)
            rows = [{"title": x.title, "link": x.link, "snippet": x.snippet, "position": i}
                    for i, x in enumerate(hits, 1)]
            return self._json(h, 200, {"searchParameters": params, "organic": rows})
        images = self.index.search_images(query, num)
        rows = [{"title": x.title, "imageUrl": x.image_url, "link": x.page_url, "position": i}
                for i, x in enumerate(images, 1)]
        self._json(h, 200, {"searchParameters": params, "images": rows})

    def _reader(self, h: _Handler, url: str) -> None:
        if url.startswith(("http:/", "https:/")) and not url.startswith(("http://", "https://")):
            url = url.replace(":/", "://", 1)  # a client that collapsed the double slash
        try:
            parts = urlsplit(url)
            own = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost") and parts.port == self.port
        except ValueError:
            own = False
        if not own:
            return self._send(h, 422, "text/plain; charset=utf-8",
                              f"this reader only reads pages of {self.url}".encode())
        page = self.corpus.page_at(parts.path)
        if page is None:
            return self._send(h, 404, "text/plain; charset=utf-8", f"no page at {parts.path[:100]}".encode())
        self._send(h, 200, "text/plain; charset=utf-8", render_page_text(page, url).encode())

    def _page(self, h: _Handler, path: str) -> None:
        page = self.corpus.page_at(path)
        if page is None:
            return self._send(h, 404, "text/html; charset=utf-8", b"<html><body>not found</body></html>")
        paragraphs = "".join(f"<p>{html.escape(block)}</p>\n" for block in page.text.split("\n") if block.strip())
        title = html.escape(page.title)
        doc = (f"<!doctype html>\n<html><head><title>{title}</title></head>\n"
               f"<body><h1>{title}</h1>\n{paragraphs}</body></html>\n")
        self._send(h, 200, "text/html; charset=utf-8", doc.encode())

    def _image(self, h: _Handler, path: str) -> None:
        image = self._images.get(path)
        if image is None:
            return self._send(h, 404, "text/plain", b"no such image")
        try:
            data = (self.corpus.root / image.file).read_bytes()
        except OSError:
            return self._send(h, 404, "text/plain", b"image file missing")
        kind = "image/png" if image.file.lower().endswith(".png") else "application/octet-stream"
        self._send(h, 200, kind, data)

    # ------------------------------------------------------------------------- writing

    def _json(self, h: _Handler, status: int, doc: Any, *, headers: dict[str, str] | None = None,
              close: bool = False) -> None:
        self._send(h, status, "application/json", json.dumps(doc).encode(), headers=headers, close=close)

    def _send(self, h: _Handler, status: int, content_type: str, body: bytes, *,
              headers: dict[str, str] | None = None, close: bool = False) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        if close:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        h.wfile.write(body)

    def _stream_filler(self, h: _Handler, size: int) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/plain; charset=utf-8")
        h.send_header("Content-Length", str(size))
        h.end_headers()
        chunk = (b"filler text of a very long page. " * 2000)[:65536]
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            h.wfile.write(piece)
            sent += len(piece)


def start_server(corpus: Corpus, faults: Iterable[Fault] = (), *, port: int = 0, api_key: str | None = None,
                 seed: int = 0) -> tuple[str, Callable[[], None]]:
    """Serve `corpus` from a background thread; returns its URL and a function that stops it."""
    server = WorldServer(corpus, faults, port=port, api_key=api_key, seed=seed).start()
    return server.url, server.stop


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gsjax.world.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", required=True, type=Path, help="a built world folder (has corpus.json)")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--faults", default="", help="fault rules (see the module docstring)")
    parser.add_argument("--key-env", default="", help="require X-API-KEY equal to this variable's value, if set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    corpus = Corpus.load(args.world)
    key = os.environ.get(args.key_env, "").strip() if args.key_env else ""
    server = WorldServer(corpus, parse_faults(args.faults), port=args.port, api_key=key or None, seed=args.seed)
    print(server.url, flush=True)
    print(f"serving {len(corpus.pages)} pages and {len(corpus.images)} images from {args.world}"
          f"{' (X-API-KEY required)' if key else ''}; Ctrl-C stops", file=sys.stderr, flush=True)
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
