"""The one HTTP client every tool backend uses, and the URL policy it enforces.

`HttpClient.request` sends one logical request and returns a `Response` or raises `HttpFailure`
(a `ToolFailure`): never a `requests` exception. Per call it gives:

- timeouts: connect and read timeouts per attempt, clipped to a total deadline for the call
  (retries and back-off sleeps included). Reading a body checks the deadline between chunks, so a
  call returns within the deadline plus at most one read timeout.
- retries on 429, 5xx, connection errors and timeouts, at most `max_attempts` attempts, with
  exponential back-off and jitter; a `Retry-After` of at most `retry_after_max_s` is honoured. A
  retry that cannot start before the deadline is not tried.
- a bound on requests in flight: a semaphore per client (`max_in_flight_seen` records the most
  ever in flight, for tests and benchmarks).
- a byte cap on bodies: the body is streamed and reading stops at the cap (`truncate=True` keeps
  the first `cap` bytes, otherwise the call fails). At most `cap` body bytes are read.
- an optional disk cache, keyed by method + URL + body, for successful responses (`cache=True`).
- redirects followed by hand, at most `max_redirects`, each hop checked against the URL policy
  before any connection is made; secret headers are dropped when a hop leaves the origin.

`UrlPolicy` refuses non-http(s) schemes and any host that is, or resolves to, an address that is
not globally routable (loopback, private ranges, link-local, multicast, reserved...), unless the
host (or host:port) is on its allow-list. Calls to a configured API base are made with
`trusted=True` (the operator chose that address); their redirects off that origin are checked.
Known gap: the name is resolved for the check and again by the connection (DNS rebinding between
the two is not prevented).

Secrets: header values named in `SECRET_HEADERS` are never logged and are redacted from every
failure message this module raises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.cookiejar
import ipaddress
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from gsjax.agent.tools.base import ToolFailure
from gsjax.fileio import atomic_write

log = logging.getLogger(__name__)

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
ERROR_BODY_BYTES = 300  # of a JSON error response, quoted in the failure (an API's reason for refusing)


class HttpFailure(ToolFailure):
    """A request that did not produce a usable response. `status` is the last HTTP status seen
    (None when no response came back)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


class UrlRefused(HttpFailure):
    """The URL policy refused a URL; no connection was made."""


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0  # per socket read (the reference waits 30 s for search APIs)
    deadline_s: float = 60.0  # per call, retries and back-off included
    max_attempts: int = 5
    backoff_s: float = 0.5  # first back-off; doubles per attempt, times U(0.5, 1)
    backoff_max_s: float = 8.0
    retry_after_max_s: float = 10.0  # a larger Retry-After is not waited for (back-off instead)
    max_in_flight: int = 32
    max_body_bytes: int = 8 * 2**20
    max_redirects: int = 3
    cache_dir: str = ""  # "" = no disk cache
    use_env_proxies: bool = False  # a proxy would connect where the URL policy cannot see
    user_agent: str = "gsjax-tools/0.1"

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "read_timeout_s", "deadline_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HttpConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("max_attempts", "max_in_flight", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"HttpConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_redirects < 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("HttpConfig: max_redirects and back-off times must be >= 0")


@dataclasses.dataclass(frozen=True)
class Response:
    url: str  # after redirects
    status: int
    content_type: str
    body: bytes
    truncated: bool = False  # the body reached the byte cap (a body of exactly the cap counts)
    from_cache: bool = False
    location: str = ""  # a redirect's Location header

    def text(self) -> str:
        charset = "utf-8"
        for part in self.content_type.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip('"')
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise HttpFailure(f"malformed JSON from {_where(self.url)}", self.status) from None


# ---------------------------------------------------------------------------------------------
# URL policy


def _parse_allow(entry: str) -> tuple[str, int | None]:
    entry = entry.strip().lower()
    if not entry:
        raise ValueError("empty allow-list entry")
    try:
        parts = urlsplit("//" + entry)
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise ValueError(f"allow-list entry {entry!r} is not host[:port] ({e})") from None
    if not host or parts.path or parts.query:
        raise ValueError(f"allow-list entry {entry!r} is not host[:port]")
    return host, port


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class UrlPolicy:
    """Which URLs the tools may fetch. `allow` holds `host` or `host:port` entries (a host alone
    allows every port); they are compared with the URL's host as written, before resolution.
    `resolve(host, port) -> [ip, ...]` is `socket.getaddrinfo` unless given (tests)."""

    def __init__(
        self,
        allow: Iterable[str] = (),
        resolve: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        self._allow = frozenset(_parse_allow(e) for e in allow)
        self._resolve = resolve or _resolve

    @property
    def allow(self) -> tuple[str, ...]:
        return tuple(sorted(h if p is None else f"{h}:{p}" for h, p in self._allow))

    def allowed_host(self, host: str, port: int) -> bool:
        return (host, None) in self._allow or (host, port) in self._allow

    def check(self, url: str) -> None:
        """Raise `UrlRefused` unless the URL may be fetched."""
        try:
            parts = urlsplit(url)
            scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
        except ValueError:
            raise UrlRefused(f"refused URL {_short(url)}: it does not parse") from None
        if scheme not in ("http", "https"):
            shown = f"{scheme}://" if scheme else "a URL without a scheme"
            raise UrlRefused(f"refused URL {_short(url)}: {shown} is not allowed (only http and https)")
        if not host:
            raise UrlRefused(f"refused URL {_short(url)}: no host")
        port = port or _default_port(scheme)
        if self.allowed_host(host, port):
            return
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                addresses = self._resolve(host, port)
            except (OSError, UnicodeError):
                raise UrlRefused(f"refused URL {_short(url)}: cannot resolve {host}") from None
        if not addresses:
            raise UrlRefused(f"refused URL {_short(url)}: {host} has no address")
        for address in addresses:
            try:
                public = is_public_address(address)
            except ValueError:
                public = False
            if not public:
                raise UrlRefused(
                    f"refused URL {_short(url)}: {host} is a loopback, private or reserved "
                    f"address ({address}) and not on the allow-list"
                )


def _short(url: str, limit: int = 200) -> str:
    return url if len(url) <= limit else url[:limit] + "..."


def _where(url: str) -> str:
    """host[:port]/path of a URL, for messages (no query string, no user info)."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"[:200]
    except ValueError:
        return "an unparsable URL"


def _origin(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or ""), parts.port or _default_port(scheme)
    except ValueError:  # a bad port: matches no origin, and the policy refuses the URL
        return "", "", -1


# ---------------------------------------------------------------------------------------------
# Disk cache


class DiskCache:
    """Response bodies on disk, keyed by sha256(method, URL, body). Writes are atomic."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(method: str, url: str, body: bytes | None) -> str:
        h = hashlib.sha256()
        h.update(method.upper().encode() + b"\n" + url.encode() + b"\n")
        h.update(body or b"")
        return h.hexdigest()

    def get(self, key: str) -> tuple[str, bytes] | None:
        path = self.folder / key[:2] / key
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            return meta["content_type"], path.with_suffix(".body").read_bytes()
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, content_type: str, body: bytes) -> None:
        folder = self.folder / key[:2]
        folder.mkdir(parents=True, exist_ok=True)
        base = folder / key
        atomic_write(base.with_suffix(".body"), body)
        atomic_write(base.with_suffix(".json"), json.dumps({"content_type": content_type}).encode())


# ---------------------------------------------------------------------------------------------
# The client


class _Retry(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.status, self.retry_after = reason, status, retry_after


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, OverflowError):
            return None


class HttpClient:
    """See the module docstring. Thread-safe; share one per process (or per backend group)."""

    def __init__(self, config: HttpConfig | None = None, policy: UrlPolicy | None = None) -> None:
        config = config or HttpConfig()
        self.config = config
        self.policy = policy or UrlPolicy()
        self.cache = DiskCache(config.cache_dir) if config.cache_dir else None
        self._session = requests.Session()
        self._session.trust_env = config.use_env_proxies
        self._session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))  # keep none
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=16, pool_maxsize=config.max_in_flight, max_retries=0
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._slots = threading.BoundedSemaphore(config.max_in_flight)
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._rng = random.Random()
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.requests_sent = 0  # attempts that reached the network (redirect hops count)
        self.bytes_read = 0  # response body bytes read from the network

    def __repr__(self) -> str:
        return f"HttpClient(max_in_flight={self.config.max_in_flight}, allow={self.policy.allow})"

    def close(self) -> None:
        self._session.close()

    def redact(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    def check_url(self, url: str) -> None:
        try:
            self.policy.check(url)
        except UrlRefused as e:
            raise UrlRefused(self.redact(str(e))) from None

    def get(self, url: str, **kwargs: Any) -> Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Response:
        return self.request("POST", url, **kwargs)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        trusted: bool = False,
        cache: bool = False,
        truncate: bool = False,
        max_bytes: int | None = None,
        deadline_s: float | None = None,
    ) -> Response:
        """One logical request. `trusted=True` skips the URL policy for the first URL's origin
        (a configured API base); every other URL, redirect hops included, is checked."""
        headers = dict(headers or {})
        for name, value in headers.items():
            if name.lower() in SECRET_HEADERS and value:
                scheme, _, token = value.partition(" ")  # "Bearer <token>": the token alone too
                with self._lock:
                    self._secrets.update(v for v in (value, token.strip()) if len(v) >= 4)
        try:
            return self._request(method.upper(), url, headers, json_body, trusted, cache, truncate,
                                 max_bytes or self.config.max_body_bytes,
                                 deadline_s or self.config.deadline_s)
        except HttpFailure as e:
            raise type(e)(self.redact(str(e)), e.status) from None

    def _request(self, method, url, headers, json_body, trusted, cache, truncate, cap, deadline_s):
        body = None if json_body is None else json.dumps(json_body).encode()
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        headers.setdefault("User-Agent", self.config.user_agent)
        cache_key = None
        if cache and self.cache is not None:
            cache_key = DiskCache.key(method, url, body)
            hit = self.cache.get(cache_key)
            if hit is not None:
                log.debug("cache hit %s %s", method, _where(url))
                return Response(url, 200, hit[0], hit[1], from_cache=True)

        deadline = time.monotonic() + deadline_s
        trusted_origin = _origin(url) if trusted else None
        if trusted_origin is not None and trusted_origin[0] not in ("http", "https"):
            trusted_origin = None  # not http(s), or unparsable: the policy says why it is refused
        attempts = hops = 0
        while True:
            if trusted_origin is None or _origin(url) != trusted_origin:
                self.check_url(url)
            try:
                resp = self._attempt(method, url, headers, body, cap, truncate, deadline)
            except _Retry as r:
                attempts += 1
                if attempts >= self.config.max_attempts:
                    raise HttpFailure(f"{r.reason} ({attempts} attempts)", r.status) from None
                wait = self._backoff(attempts, r.retry_after)
                if time.monotonic() + wait >= deadline:
                    raise HttpFailure(
                        f"{r.reason}; no time left to retry within {deadline_s:g} s", r.status
                    ) from None
                log.info("retrying %s %s in %.2f s: %s", method, _where(url), wait, r.reason)
                time.sleep(wait)
                continue
            if resp.status in _REDIRECTS:
                hops += 1
                location = resp.location
                if hops > self.config.max_redirects:
                    raise HttpFailure(f"more than {self.config.max_redirects} redirects from {_where(url)}")
                if not location:
                    raise HttpFailure(f"HTTP {resp.status} without a Location from {_where(url)}", resp.status)
                new_url = urljoin(url, location)
                if _origin(new_url) != _origin(url):
                    headers = {k: v for k, v in headers.items() if k.lower() not in SECRET_HEADERS}
                if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                    method, body = "GET", None
                    headers.pop("Content-Type", None)
                url = new_url
                continue
            if resp.status >= 400:
                detail = resp.body.decode("utf-8", "replace").strip()[:ERROR_BODY_BYTES]
                raise HttpFailure(f"HTTP {resp.status} from {_where(url)}" + (f": {detail}" if detail else ""),
                                  resp.status)
            if cache_key is not None and not resp.truncated:
                self.cache.put(cache_key, resp.content_type, resp.body)
            return resp

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None and retry_after <= self.config.retry_after_max_s:
            return retry_after
        base = min(self.config.backoff_max_s, self.config.backoff_s * 2 ** (attempt - 1))
        with self._lock:
            return base * self._rng.uniform(0.5, 1.0)

    def _attempt(self, method, url, headers, body, cap, truncate, deadline) -> Response:
        """One network round trip (one hop): the response, _Retry for what is worth retrying,
        HttpFailure otherwise."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HttpFailure(f"no response from {_where(url)} within the deadline")
        if not self._slots.acquire(timeout=remaining):
            raise HttpFailure(f"waited {remaining:.1f} s for a free connection slot")
        with self._lock:
            self.in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
            self.requests_sent += 1
        try:
            return self._exchange(method, url, headers, body, cap, truncate, deadline)
        finally:
            with self._lock:
                self.in_flight -= 1
            self._slots.release()

    def _exchange(self, method, url, headers, body, cap, truncate, deadline) -> Response:
        where = _where(url)
        remaining = deadline - time.monotonic()
        timeout = (min(self.config.connect_timeout_s, remaining), min(self.config.read_timeout_s, remaining))
        try:
            r = self._session.request(method, url, headers=headers, data=body, timeout=timeout,
                                      stream=True, allow_redirects=False)
        except requests.exceptions.ConnectTimeout:
            raise _Retry(f"connecting to {where} timed out after {timeout[0]:.1f} s") from None
        except requests.exceptions.Timeout:
            raise _Retry(f"no response from {where} within {timeout[1]:.1f} s") from None
        except requests.exceptions.ConnectionError:
            raise _Retry(f"connection to {where} failed") from None
        except requests.exceptions.RequestException as e:
            raise HttpFailure(f"request to {where} failed ({type(e).__name__})") from None
        with r:
            status, content_type = r.status_code, r.headers.get("Content-Type", "")
            if status in _REDIRECTS:
                return Response(url, status, content_type, b"", location=r.headers.get("Location", ""))
            if status == 429 or status >= 500:
                raise _Retry(f"HTTP {status} from {where}", status, _retry_after(r.headers.get("Retry-After")))
            if status >= 400:  # a JSON error body (an API's reason) is kept, up to ERROR_BODY_BYTES
                keep = ERROR_BODY_BYTES if "json" in content_type.lower() else 0
                data = self._read_capped(r, keep, deadline, where)[0] if keep else b""
                return Response(url, status, content_type, data)
            length = r.headers.get("Content-Length", "")
            if not truncate and length.isdigit() and int(length) > cap:
                raise HttpFailure(f"response from {where} is {int(length)} bytes, over the cap of {cap}", status)
            data, truncated = self._read_capped(r, cap, deadline, where)
            if truncated and not truncate:
                raise HttpFailure(f"response from {where} is over the cap of {cap} bytes", status)
            return Response(url, status, content_type, data, truncated=truncated)

    def _read_capped(self, r: requests.Response, cap: int, deadline: float, where: str) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        got = 0
        try:
            while got < cap:
                chunk = r.raw.read(min(65536, cap - got), decode_content=True)
                if not chunk:
                    return b"".join(chunks), False
                chunks.append(chunk)
                got += len(chunk)
                with self._lock:
                    self.bytes_read += len(chunk)
                if time.monotonic() > deadline:
                    raise HttpFailure(f"reading the response from {where} passed the deadline")
        except (urllib3.exceptions.ReadTimeoutError, socket.timeout, TimeoutError):
            raise _Retry(f"reading the response from {where} timed out") from None
        except (urllib3.exceptions.HTTPError, OSError):
            raise _Retry(f"the connection to {where} broke while reading") from None
        return b"".join(chunks), True
