"""The HTTP client and URL policy, against the loopback world server with injected faults."""

from __future__ import annotations

import threading
import time

import pytest

from gsjax.agent.tools import HttpClient, HttpConfig, HttpFailure, UrlPolicy, UrlRefused, build_toolbox
from gsjax.agent.tools.images import HttpImageFetcher
from gsjax.agent.tools.readers import DirectReader, JinaReader
from gsjax.agent.tools.serper import SerperSearch
from gsjax.agent.types import ImageRegistry, ToolCall
from gsjax.world.serve import Fault
from test_tools_support import FAST_HTTP, LONG_SLUG, connections, corpus, http_tools_config, serve  # noqa: F401

# ---------------------------------------------------------------------------------------------
# URL policy


def no_dns(host, port):
    raise AssertionError(f"resolved {host}")


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://example.com/x", "javascript:alert(1)", "gopher://1.2.3.4/", "//1.2.3.4/x",
    "http:///nohost", "http://127.0.0.1/", "http://127.9.9.9:8080/", "http://10.0.0.1/", "http://10.255.1.2/",
    "http://172.16.0.5/", "http://192.168.1.10/", "http://169.254.169.254/latest/meta-data", "http://0.0.0.0/",
    "http://[::1]/", "http://[::ffff:10.0.0.1]/", "http://[fe80::1]/", "http://[fc00::1]/", "http://100.64.0.1/",
    "http://224.0.0.1/", "http://[::]/", "http://1.2.3.4:99999/",
])
def test_policy_refuses_non_http_loopback_private_and_reserved(url):
    with pytest.raises(UrlRefused):
        UrlPolicy(resolve=no_dns).check(url)


def test_policy_allows_public_addresses_and_checks_every_resolved_address():
    names = {"public.example": ["93.184.216.34"], "mixed.example": ["93.184.216.34", "10.1.2.3"],
             "localhost": ["127.0.0.1"]}

    def resolve(host, port):
        if host not in names:
            raise OSError("unknown host")
        return names[host]

    policy = UrlPolicy(resolve=resolve)
    policy.check("https://93.184.216.34/page")
    policy.check("http://public.example:8080/x?y=1")
    for url in ["http://mixed.example/", "http://localhost/", "http://unknown.example/"]:
        with pytest.raises(UrlRefused):
            policy.check(url)


def test_allow_list_names_host_or_host_and_port():
    policy = UrlPolicy(["127.0.0.1:8080", "10.0.0.7", "[::1]:9000"], resolve=no_dns)
    policy.check("http://127.0.0.1:8080/page/x")
    policy.check("http://10.0.0.7:1234/")
    policy.check("http://[::1]:9000/")
    for url in ["http://127.0.0.1:8081/", "http://127.0.0.1/", "http://[::1]:9001/", "file://127.0.0.1:8080/x"]:
        with pytest.raises(UrlRefused):
            policy.check(url)
    with pytest.raises(ValueError):
        UrlPolicy(["127.0.0.1/path"])


# ---------------------------------------------------------------------------------------------
# Retries, timeouts, caps


def client_for(server, **kw) -> HttpClient:
    config = HttpConfig(**{**FAST_HTTP.__dict__, **kw})
    return HttpClient(config, UrlPolicy([f"127.0.0.1:{server.port}"]))


def test_429_bursts_are_retried_until_they_succeed(serve):
    server = serve(Fault("/search", "status", status=429, first=2))
    hits = SerperSearch(client_for(server), server.url, key_env="", cache=False).search("Tessel Rovers", 3)
    assert hits[0].title == "Tessel Rovers"
    assert server.hits["/search"] == 3


def test_a_small_retry_after_is_honoured(serve):
    server = serve(Fault("/search", "status", status=429, first=1, retry_after=0.4))
    t0 = time.perf_counter()
    SerperSearch(client_for(server), server.url, key_env="", cache=False).search("Tessel", 3)
    assert time.perf_counter() - t0 >= 0.4


def test_500s_beyond_the_retry_budget_become_a_tool_error(serve, tmp_path):
    server = serve(Fault("/search", "status", status=500))
    with build_toolbox(http_tools_config(server, tmp_path)) as tools:
        result = tools.run(ToolCall("search", {"queries": ["Tessel Rovers"]}), ImageRegistry())
    assert result.text == f"[Tool Error]: HTTP 500 from 127.0.0.1:{server.port}/search (4 attempts)"
    assert result.error and server.hits["/search"] == 4


def test_a_response_slower_than_the_timeout_returns_within_the_deadline(serve, tmp_path):
    server = serve(Fault("/search", "stall", seconds=3.0))
    http = HttpConfig(connect_timeout_s=0.5, read_timeout_s=0.3, deadline_s=1.0, max_attempts=10, backoff_s=0.01)
    with build_toolbox(http_tools_config(server, tmp_path, http=http)) as tools:
        t0 = time.perf_counter()
        result = tools.run(ToolCall("search", {"queries": ["Tessel Rovers"]}), ImageRegistry())
        elapsed = time.perf_counter() - t0
    assert elapsed < 1.5
    assert result.text.startswith("[Tool Error]: no response from 127.0.0.1") and result.error


def test_malformed_json_is_a_tool_error(serve, tmp_path):
    server = serve(Fault("/search", "malformed"), Fault("/images", "malformed"))
    with build_toolbox(http_tools_config(server, tmp_path)) as tools:
        search = tools.run(ToolCall("search", {"queries": ["Tessel Rovers"]}), ImageRegistry())
        images = tools.run(ToolCall("image_search", {"query": "Tessel Rovers"}), ImageRegistry())
    assert search.text == f"[Tool Error]: malformed JSON from 127.0.0.1:{server.port}/search"
    assert images.text == f"[Tool Error]: malformed JSON from 127.0.0.1:{server.port}/images"


def test_a_50_mb_page_is_read_only_up_to_the_cap(serve):
    server = serve(Fault("/reader", "huge", size=50_000_000), Fault("/page", "huge", size=50_000_000))
    cap = 256 * 1024
    for make_reader in (lambda c: JinaReader(c, f"{server.url}/reader", key_env=""), DirectReader):
        client = client_for(server, max_body_bytes=cap)
        t0 = time.perf_counter()
        text = make_reader(client).read(f"{server.url}/page/brimhall")
        assert len(text.encode()) <= cap and text.startswith("filler text")
        assert client.bytes_read <= cap
        assert time.perf_counter() - t0 < 3
    with pytest.raises(HttpFailure, match="over the cap"):  # where truncation is not wanted, it fails
        client_for(server, max_body_bytes=cap).get(f"{server.url}/page/brimhall")


def test_browse_of_a_huge_page_through_the_tools_is_capped(serve, tmp_path):
    server = serve(Fault("/reader", "huge", size=50_000_000))
    config = http_tools_config(server, tmp_path, http=HttpConfig(**{**FAST_HTTP.__dict__, "max_body_bytes": 500_000}))
    with build_toolbox(config) as tools:
        result = tools.run(ToolCall("browse", {"url": f"{server.url}/page/brimhall", "query": "q"}), ImageRegistry())
    assert result.error is None and len(result.text) == 120_003 and result.text.endswith("...")


def test_a_non_image_served_as_an_image_is_rejected(serve, tmp_path):
    server = serve(Fault("/img/tessel-rovers-1", "not_image"))
    with build_toolbox(http_tools_config(server, tmp_path)) as tools:
        result = tools.run(ToolCall("image_search", {"query": "Tessel Rovers", "top_k": 2}), ImageRegistry())
    urls = [r.url for r in result.images]
    assert len(urls) == 2 and urls[0] == f"{server.url}/img/tessel-rovers-2.png"  # the next hit takes its place
    assert "tessel-rovers-1" not in result.text and server.hits["/img"] == 3


def test_a_redirect_to_a_private_address_is_refused_without_connecting(serve, connections):
    server = serve(Fault("/img", "redirect", location="http://10.0.0.1/steal.png"),
                   Fault("/page", "redirect", location="http://192.168.0.1/"))
    client = client_for(server)
    with pytest.raises(UrlRefused, match="10.0.0.1"):
        HttpImageFetcher(client).fetch(f"{server.url}/img/lumen-moth-1.png")
    with pytest.raises(UrlRefused, match="192.168.0.1"):
        DirectReader(client).read(f"{server.url}/page/lumen-moth")
    assert connections.addresses and {host for host, _ in connections.addresses} == {"127.0.0.1"}


def test_image_search_through_a_private_redirect_shows_no_image(serve, tmp_path, connections):
    server = serve(Fault("/img", "redirect", location="http://10.0.0.1/x.png"))
    with build_toolbox(http_tools_config(server, tmp_path)) as tools:
        result = tools.run(ToolCall("image_search", {"query": "Lumen Moth"}), ImageRegistry())
    assert result.images == [] and result.text.endswith("--- end of image search result ---")
    assert {host for host, _ in connections.addresses} == {"127.0.0.1"}


def test_redirects_are_followed_a_bounded_number_of_times(serve):
    server = serve()
    loop = serve(Fault("/page", "redirect", location=f"{server.url}/page/x"))  # the first server, which
    ok = client_for(loop, max_redirects=2)  # is not allow-listed for this client
    with pytest.raises(UrlRefused):
        ok.get(f"{loop.url}/page/brimhall")
    hop = serve(Fault("/page", "redirect", location="/page/again"))
    with pytest.raises(HttpFailure, match="more than 2 redirects"):
        client_for(hop, max_redirects=2).get(f"{hop.url}/page/brimhall")
    assert hop.hits["/page"] == 3


def test_requests_in_flight_never_exceed_the_bound(serve):
    server = serve(Fault("/", "latency", seconds=0.05))
    client = client_for(server, max_in_flight=3)
    search = SerperSearch(client, server.url, key_env="", cache=False)
    errors = []

    def work(i):
        try:
            search.search(f"Tessel {i}", 3)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not errors and client.requests_sent == 24
    assert client.max_in_flight_seen == 3


def test_tool_calls_on_the_pool_respect_the_client_bound(serve, tmp_path):
    server = serve(Fault("/", "latency", seconds=0.05))
    http = HttpConfig(**{**FAST_HTTP.__dict__, "max_in_flight": 4})
    config = http_tools_config(server, tmp_path, workers=16, http=http)
    tools = build_toolbox(config)
    client = tools.tools["search"].backend.client
    futures = [tools.submit(ToolCall("search", {"queries": [f"Brimhall {i}"]}), ImageRegistry()) for i in range(32)]
    results = [f.result(timeout=20) for f in futures]
    tools.close()
    assert all(r.error is None for r in results)
    assert client.max_in_flight_seen == 4


def test_a_second_identical_search_is_served_from_the_disk_cache(serve, tmp_path):
    server = serve()
    http = HttpConfig(**{**FAST_HTTP.__dict__, "cache_dir": str(tmp_path / "http-cache")})
    with build_toolbox(http_tools_config(server, tmp_path, http=http)) as tools:
        client = tools.tools["search"].backend.client
        call = ToolCall("search", {"queries": ["Orrin Tower"], "top_k": 3})
        first = tools.run(call, ImageRegistry())
        sent = client.requests_sent
        second = tools.run(call, ImageRegistry())
        assert client.requests_sent == sent and server.hits["/search"] == 1
        assert second.text == first.text and "[Orrin Tower](" in first.text
        tools.run(ToolCall("search", {"queries": ["Orrin Tower"], "top_k": 4}), ImageRegistry())
        assert server.hits["/search"] == 2  # another body, another key


def test_connection_refused_is_retried_then_reported(tmp_path):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = HttpClient(HttpConfig(**{**FAST_HTTP.__dict__, "max_attempts": 2}), UrlPolicy([f"127.0.0.1:{port}"]))
    with pytest.raises(HttpFailure, match=f"connection to 127.0.0.1:{port}/x failed \\(2 attempts\\)"):
        client.get(f"http://127.0.0.1:{port}/x")


def test_long_page_through_http_tools_matches_the_local_cut(serve, tmp_path):
    server = serve()
    with build_toolbox(http_tools_config(server, tmp_path)) as tools:
        result = tools.run(ToolCall("browse", {"url": f"{server.url}/page/{LONG_SLUG}", "query": "q"}), ImageRegistry())
    assert result.error is None and len(result.text) == 120_003
