"""gsjax.world.serve: the loopback world server's endpoints, its fault rules and its command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from gsjax.world.serve import Fault, WorldServer, parse_faults, start_server
from test_tools_support import PLANTED_KEY, corpus, serve  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]


def post(url, body, timeout=5, **kw):
    return requests.post(url, json=body, timeout=timeout, **kw)


def test_search_endpoints_answer_like_serper_with_links_to_the_server(serve):
    server = serve()
    organic = post(f"{server.url}/search", {"q": "Orrin Tower golden clock", "num": 2}).json()["organic"]
    assert organic[0] == {"title": "Orrin Tower", "link": f"{server.url}/page/orrin-tower", "position": 1,
                          "snippet": "Orrin Tower is a tall brick tower with a golden clock face."}
    assert len(organic) == 2
    images = post(f"{server.url}/images", {"q": "Lumen Moth"}).json()["images"]
    assert images[0] == {"title": "Lumen Moth (photo 1)", "imageUrl": f"{server.url}/img/lumen-moth-1.png",
                         "link": f"{server.url}/page/lumen-moth", "position": 1}
    assert post(f"{server.url}/search", ["not", "an", "object"]).status_code == 400


def test_pages_images_and_the_reader(serve, corpus):
    server = serve()
    page = requests.get(f"{server.url}/page/velda-quay", timeout=5)
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<title>Velda Quay</title>" in page.text and "<p>Velda Quay performs in a purple coat" in page.text
    image = requests.get(f"{server.url}/img/velda-quay-1.png", timeout=5)
    assert image.headers["Content-Type"] == "image/png"
    assert image.content == (corpus.root / "images/velda-quay-1.png").read_bytes()
    text = requests.get(f"{server.url}/reader/{server.url}/page/velda-quay", timeout=5)
    assert text.status_code == 200
    assert text.text.startswith(f"Title: Velda Quay\n\nURL Source: {server.url}/page/velda-quay\n\nMarkdown Content:\n")
    spelled = requests.get(f"{server.url}/reader/{server.url}/page/Velda_Quay", timeout=5)
    assert spelled.text.startswith(f"Title: Velda Quay\n\nURL Source: {server.url}/page/Velda_Quay\n")
    assert "<title>Velda Quay</title>" in requests.get(f"{server.url}/page/Velda%20Quay", timeout=5).text
    foreign = requests.get(f"{server.url}/reader/http://127.0.0.1:1/page/velda-quay", timeout=5)
    assert foreign.status_code == 422
    for path in ["/page/nope", "/img/nope.png", "/img/../corpus.json", "/corpus.json", f"/reader/{server.url}/page/x"]:
        assert requests.get(server.url + path, timeout=5).status_code == 404, path
    assert server.hits["/page"] == 3 and server.hits["/reader"] == 4


def test_the_api_key_is_checked_when_set(serve):
    server = serve(api_key=PLANTED_KEY)
    assert post(f"{server.url}/search", {"q": "x"}).status_code == 403
    assert post(f"{server.url}/search", {"q": "x"}, headers={"X-API-KEY": "wrong"}).status_code == 403
    assert post(f"{server.url}/search", {"q": "x"}, headers={"X-API-KEY": PLANTED_KEY}).status_code == 200
    assert PLANTED_KEY not in repr(server)


def test_parse_faults_reads_the_rules():
    faults = parse_faults("/:latency=0.2; /search:status=429,first=3,retry_after=1 ;/reader:huge=1000;"
                          "/img:redirect=http://10.0.0.1/x;/images:malformed,rate=0.5;/img/a:not_image;/x:stall=2")
    assert faults == [
        Fault("/", "latency", seconds=0.2), Fault("/search", "status", status=429, first=3, retry_after=1.0),
        Fault("/reader", "huge", size=1000), Fault("/img", "redirect", location="http://10.0.0.1/x"),
        Fault("/images", "malformed", rate=0.5), Fault("/img/a", "not_image"), Fault("/x", "stall", seconds=2.0),
    ]
    assert parse_faults("") == []
    for bad in ["/search", "/search:explode", "search:malformed", "/search:status=abc", "/search:malformed=1",
                "/search:status=429,often=2", "/search:malformed,rate=2"]:
        with pytest.raises(ValueError):
            parse_faults(bad)


def test_faults_fire_for_the_first_n_matching_requests(serve):
    server = serve(Fault("/search", "status", status=503, first=2, retry_after=1.5))
    codes = [post(f"{server.url}/search", {"q": "x"}) for _ in range(3)]
    assert [r.status_code for r in codes] == [503, 503, 200]
    assert codes[0].headers["Retry-After"] == "1.5"
    assert post(f"{server.url}/images", {"q": "x"}).status_code == 200  # another prefix


def test_rate_faults_are_seeded(corpus):
    def pattern(seed):
        url, stop = start_server(corpus, [Fault("/search", "status", status=500, rate=0.5)], seed=seed)
        try:
            return [post(f"{url}/search", {"q": "x"}).status_code for _ in range(16)]
        finally:
            stop()

    first = pattern(7)
    assert first == pattern(7) and 500 in first and 200 in first
    assert first != pattern(8)


def test_latency_faults_add_up_and_other_faults_answer(serve):
    server = serve(Fault("/", "latency", seconds=0.1), Fault("/search", "latency", seconds=0.1),
                   Fault("/search", "malformed"), Fault("/img", "redirect", location="http://10.0.0.1/"),
                   Fault("/img/lumen", "not_image"))
    t0 = time.perf_counter()
    r = post(f"{server.url}/search", {"q": "x"})
    assert time.perf_counter() - t0 >= 0.2
    with pytest.raises(ValueError):
        r.json()
    moved = requests.get(f"{server.url}/img/lumen-moth-1.png", allow_redirects=False, timeout=5)
    assert moved.status_code == 302 and moved.headers["Location"] == "http://10.0.0.1/"  # the first rule wins


def test_huge_and_not_image_bodies(serve):
    server = serve(Fault("/reader", "huge", size=300_000), Fault("/img", "not_image"))
    body = requests.get(f"{server.url}/reader/{server.url}/page/brimhall", timeout=5)
    assert len(body.content) == 300_000 and int(body.headers["Content-Length"]) == 300_000
    image = requests.get(f"{server.url}/img/brimhall-1.png", timeout=5)
    assert image.headers["Content-Type"] == "image/png" and image.content.startswith(b"<html>")


def test_a_stalled_client_does_not_stop_the_server(serve):
    server = serve(Fault("/search", "stall", seconds=0.5, first=1))
    with pytest.raises(requests.exceptions.Timeout):
        post(f"{server.url}/search", {"q": "x"}, timeout=0.1)
    assert post(f"{server.url}/search", {"q": "x"}).status_code == 200


def test_only_loopback_is_served(corpus):
    with WorldServer(corpus) as server:
        assert server.url.startswith("http://127.0.0.1:") and server._http.server_address[0] == "127.0.0.1"


def test_the_command_line_prints_its_url_and_serves(corpus):
    env = {**os.environ, "GSJAX_TEST_SERVE_KEY": PLANTED_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gsjax.world.serve", "--world", str(corpus.root),
         "--faults", "/search:status=500,first=1", "--key-env", "GSJAX_TEST_SERVE_KEY"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        headers = {"X-API-KEY": PLANTED_KEY}
        assert post(f"{url}/search", {"q": "Orrin Tower"}, headers=headers).status_code == 500
        organic = post(f"{url}/search", {"q": "Orrin Tower"}, headers=headers).json()["organic"]
        assert organic[0]["title"] == "Orrin Tower"
        assert post(f"{url}/search", {"q": "Orrin Tower"}).status_code == 403
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert PLANTED_KEY not in err and "X-API-KEY required" in err
