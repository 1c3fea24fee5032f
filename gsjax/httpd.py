"""What gsjax's own HTTP servers share (`gsjax.serve_generator`, `gsjax.serve_policy`): a threaded
server whose handler hands each request to the server object that owns it, JSON replies, and
serving from the command line until SIGTERM or Ctrl-C."""

from __future__ import annotations

import json
import logging
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


class OwnedHandler(BaseHTTPRequestHandler):
    """POST goes to `owner.handle_post(handler)`, GET to `owner.handle_get(handler)`."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.server.owner.handle_post(self)  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802
        self.server.owner.handle_get(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


class OwnedServer(ThreadingHTTPServer):
    """One thread per request; `owner` handles them (`OwnedHandler`)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], owner: object):
        super().__init__(address, OwnedHandler)
        self.owner = owner


def json_reply(h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
    """`payload` as the whole JSON response; a client that went away closes the connection."""
    data = json.dumps(payload).encode()
    try:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        h.close_connection = True


def serve_until_stopped(server) -> None:
    """Block until SIGTERM or Ctrl-C, then stop `server` (a started `fileio.BackgroundServer`)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop()
