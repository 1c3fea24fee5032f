"""The tools through the real HTTP clients against the loopback world server: the same observations
as in process, the URL policy on browse, the summariser, and API keys that never leak."""

from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gsjax.agent.tools import HttpConfig, ToolsConfig, build_toolbox
from gsjax.agent.tools.images import cache_path
from gsjax.agent.types import ImageRegistry, ToolCall
from gsjax.world.serve import Fault
from test_tools_support import (  # noqa: F401 - fixtures
    FAST_HTTP, LONG_SLUG, PLANTED_KEY, connections, corpus, http_tools_config, serve,
)

LOCAL_PATH = re.compile(r"local_path: .*")
CALLS = [
    ToolCall("search", {"queries": ["Tessel Rovers emblem", "lighthouse pier"], "top_k": 3}),
    ToolCall("search", {"queries": ["zzzz nothing"]}),
    ToolCall("image_search", {"query": "Tessel Rovers", "top_k": 10}),
    ToolCall("image_search", {"query": "Quillon badge"}),
    ToolCall("browse", {"url": "{base}/page/velda-quay", "query": "coat"}),
]


def run_all(tools, base: str):
    registry = ImageRegistry()
    out = []
    for call in CALLS:
        args = {k: v.format(base=base) if isinstance(v, str) else v for k, v in call.arguments.items()}
        out.append(tools.run(ToolCall(call.name, args), registry))
    return out


@pytest.mark.parametrize("reader", ["jina", "direct"])
def test_http_backends_give_the_same_observations_as_the_local_world(corpus, serve, tmp_path, reader):
    server = serve()
    with build_toolbox(ToolsConfig(image_dir=str(tmp_path / "local")), corpus=corpus) as tools:
        local = run_all(tools, "world://")
    with build_toolbox(http_tools_config(server, tmp_path / "http", reader=reader)) as tools:
        served = run_all(tools, server.url)
    for i, (a, b) in enumerate(zip(local, served)):
        assert a.error is None and b.error is None
        if CALLS[i].name == "browse" and reader == "direct":  # the page as HTML, read back as text
            assert "Velda Quay performs in a purple coat with a silver microphone." in b.text
            continue
        expected = LOCAL_PATH.sub("local_path: ...", a.text.replace("world://", server.url))
        assert LOCAL_PATH.sub("local_path: ...", b.text) == expected, CALLS[i]
        assert [r.img_id for r in a.images] == [r.img_id for r in b.images]
        for ref in b.images:
            assert f"local_path: {ref.path}\n" in b.text
            assert Path(ref.path) == cache_path(tmp_path / "http", ref.url) and Path(ref.path).is_file()
    assert len(served[2].images) == 4 and served[3].text.count("\n") == 1  # 4 pictures match; no badge is good


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "http://127.0.0.1:{port2}/page/brimhall", "http://localhost:{port}/page/brimhall",
    "http://10.0.0.5/page", "http://192.168.1.1/admin", "http://169.254.169.254/latest/meta-data",
])
@pytest.mark.parametrize("reader", ["jina", "direct"])
def test_browse_refuses_local_and_private_urls_unless_allow_listed(serve, tmp_path, connections, url, reader):
    server, other = serve(), serve()
    url = url.format(port=server.port, port2=other.port)
    with build_toolbox(http_tools_config(server, tmp_path, reader=reader)) as tools:
        result = tools.run(ToolCall("browse", {"url": url, "query": "q"}), ImageRegistry())
    assert result.text.startswith("[Tool Error]: refused URL ") and result.error
    assert other.hits == {} and server.hits == {}
    assert connections.addresses == []


def test_browse_of_an_allow_listed_host_works_and_the_list_is_the_gate(serve, tmp_path):
    server = serve()
    url = f"{server.url}/page/brimhall"
    with build_toolbox(http_tools_config(server, tmp_path)) as tools:
        assert tools.run(ToolCall("browse", {"url": url, "query": "q"}), ImageRegistry()).error is None
    with build_toolbox(http_tools_config(server, tmp_path, allow=("127.0.0.1:1",))) as tools:
        # The reader API itself is trusted (configured), but the page URL is checked.
        result = tools.run(ToolCall("browse", {"url": url, "query": "q"}), ImageRegistry())
    assert result.text.startswith("[Tool Error]: refused URL") and server.hits["/reader"] == 1


# ---------------------------------------------------------------------------------------------
# Summariser


class ChatServer:
    """A stand-in OpenAI-compatible chat API on loopback: records requests, answers per `reply`."""

    def __init__(self, reply=None):
        self.requests: list[tuple[dict, dict]] = []
        self.reply = reply or (lambda body: {"choices": [{"message": {"role": "assistant",
                                                                      "content": f"answer {len(self.requests)}"}}]})
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((dict(self.headers), body))
                data = outer.reply(body)
                raw = data if isinstance(data, bytes) else json.dumps(data).encode()
                status = 404 if self.path != "/v1/chat/completions" else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat():
    servers = []

    def start(reply=None):
        servers.append(ChatServer(reply))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def test_browse_summarises_the_page_for_the_query(serve, chat, tmp_path, monkeypatch):
    monkeypatch.setenv("GSJAX_TEST_SUMMARY_KEY", PLANTED_KEY)
    server, api = serve(), chat()
    config = http_tools_config(server, tmp_path, summary_base=api.url, summary_model="tiny-summariser",
                               summary_key_env="GSJAX_TEST_SUMMARY_KEY")
    with build_toolbox(config) as tools:
        result = tools.run(ToolCall("browse", {"url": f"{server.url}/page/velda-quay", "query": "What coat?"}),
                           ImageRegistry())
    assert result.text == "answer 1" and result.error is None
    (headers, body), = api.requests
    assert headers["Authorization"] == f"Bearer {PLANTED_KEY}"
    assert body["model"] == "tiny-summariser" and body["temperature"] == 0 and body["max_tokens"] == 8192
    prompt = body["messages"][0]["content"]
    assert "purple coat with a silver microphone" in prompt and prompt.endswith("Question: What coat?")
    assert "does not answer it" in prompt  # told to refuse when the page is irrelevant


def test_a_long_page_is_summarised_in_overlapping_chunks(serve, chat, tmp_path):
    server, api = serve(), chat()
    config = http_tools_config(server, tmp_path, summary_base=api.url, summary_model="m",
                               chunk_tokens=20_000, overlap_tokens=1000)
    with build_toolbox(config) as tools:
        result = tools.run(ToolCall("browse", {"url": f"{server.url}/page/{LONG_SLUG}", "query": "tolls"}),
                           ImageRegistry())
    n = len(api.requests)
    assert n == 3  # ~200k characters = ~50k approximate tokens, 20k per chunk
    assert result.text.startswith("The page was too long to read in one piece, so it was split into 3 ")
    for i in range(1, n + 1):
        assert f"--- begin of result part {i} ---\nanswer {i}\n--- end of result part {i} ---" in result.text
    chunks = [b["messages"][0]["content"] for _, b in api.requests]
    assert all(len(c) < 20_000 * 4 + 1000 for c in chunks)


@pytest.mark.parametrize("reply, reason", [
    (lambda body: b"{not json", "malformed JSON from 127.0.0.1"),
    (lambda body: {"choices": []}, "the summary API reply has no choices[0].message.content"),
    (lambda body: {"choices": [{"message": {"content": "  "}}]}, "the summary model returned an empty answer"),
])
def test_summariser_failures_are_tool_errors(serve, chat, tmp_path, reply, reason):
    server, api = serve(), chat(reply)
    config = http_tools_config(server, tmp_path, summary_base=api.url, summary_model="m")
    with build_toolbox(config) as tools:
        result = tools.run(ToolCall("browse", {"url": f"{server.url}/page/brimhall", "query": "q"}), ImageRegistry())
    assert result.text.startswith(f"[Tool Error]: {reason}")


# ---------------------------------------------------------------------------------------------
# Secrets


def test_a_planted_api_key_never_leaks(serve, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("GSJAX_TEST_SERPER_KEY", PLANTED_KEY)
    monkeypatch.setenv("GSJAX_TEST_JINA_KEY", PLANTED_KEY)
    good = serve(api_key=PLANTED_KEY)
    wrong = serve(api_key="another-key")
    flaky = serve(Fault("/search", "status", status=503), Fault("/reader", "redirect", location="http://10.9.9.9/"),
                  api_key=PLANTED_KEY)
    texts = []
    for server in (good, wrong, flaky):
        config = http_tools_config(server, tmp_path / str(server.port), search_key_env="GSJAX_TEST_SERPER_KEY",
                                   reader_key_env="GSJAX_TEST_JINA_KEY")
        with build_toolbox(config) as tools:
            texts.append(repr(tools.tools) + repr(config))
            for call in [ToolCall("search", {"queries": ["Tessel Rovers"]}),
                         ToolCall("image_search", {"query": "Tessel Rovers"}),
                         ToolCall("browse", {"url": f"{server.url}/page/brimhall", "query": "q"})]:
                result = tools.run(call, ImageRegistry())
                texts += [result.text, str(result.error), repr(result)]
    assert any(t.startswith("[Tool Error]: HTTP 403 from") for t in texts)  # the wrong key
    assert any("HTTP 503" in t for t in texts) and any("10.9.9.9" in t for t in texts)
    assert good.hits["/search"] == 1 and good.hits["/images"] == 2 and good.hits["/img"] > 0
    for text in texts + [caplog.text]:
        assert PLANTED_KEY not in text
    assert "sk-planted" not in caplog.text


def test_failure_messages_redact_secret_header_values(serve):
    from gsjax.agent.tools import HttpClient, HttpFailure, UrlPolicy

    server = serve(Fault("/", "status", status=500))
    config = HttpConfig(**{**FAST_HTTP.__dict__, "max_attempts": 1})
    client = HttpClient(config, UrlPolicy([f"127.0.0.1:{server.port}"]))
    with pytest.raises(HttpFailure) as e:  # a URL that happens to contain the key is still redacted
        client.get(f"{server.url}/page/{PLANTED_KEY}", headers={"Authorization": f"Bearer {PLANTED_KEY}"})
    assert PLANTED_KEY not in str(e.value) and "***" in str(e.value)


def test_a_missing_key_variable_is_named_not_guessed(serve, tmp_path, monkeypatch):
    monkeypatch.delenv("GSJAX_TEST_UNSET_KEY", raising=False)
    server = serve()
    with build_toolbox(http_tools_config(server, tmp_path, search_key_env="GSJAX_TEST_UNSET_KEY")) as tools:
        result = tools.run(ToolCall("search", {"queries": ["q"]}), ImageRegistry())
    assert result.text == "[Tool Error]: the environment variable GSJAX_TEST_UNSET_KEY (API key) is not set"
    assert server.hits == {}


def test_cross_origin_redirects_drop_the_api_key(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("GSJAX_TEST_SERPER_KEY", PLANTED_KEY)
    target = serve(api_key=PLANTED_KEY)  # would accept the key if it were forwarded
    source = serve(Fault("/search", "redirect", location=f"{target.url}/search"), api_key=PLANTED_KEY)
    config = http_tools_config(source, tmp_path, search_key_env="GSJAX_TEST_SERPER_KEY",
                               allow=(f"127.0.0.1:{source.port}", f"127.0.0.1:{target.port}"))
    with build_toolbox(config) as tools:
        result = tools.run(ToolCall("search", {"queries": ["Tessel"]}), ImageRegistry())
    # 302 turns the POST into a GET without the key: the target has no GET /search and no key came.
    assert result.error and target.hits["/search"] == 1 and PLANTED_KEY not in result.text
