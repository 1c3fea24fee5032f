"""`python -m gsjax.serve_policy`: a policy folder behind an OpenAI-compatible chat API over loopback,
with continuous batching, streaming, log-probabilities, token ids and a reload-from-disk endpoint."""

from __future__ import annotations

import concurrent.futures as cf
import json

import numpy as np
import pytest
import requests
from flax import nnx

from gsjax.agent.policy import Policy, load_policy, save_policy
from gsjax.agent.protocol import AgentLimits
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.sampling import SamplingParams
from gsjax.serve_policy import PolicyServer, PolicyService
from gsjax.tokenizer import Tokenizer

SAMPLING = SamplingParams(temperature=1.0, top_p=0.9)
CACHE = 1024
SEED = 7


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny random policy folder, and a second one of the same shape with other weights."""
    base = tmp_path_factory.mktemp("serve")
    tok = Tokenizer.train_bpe(["<think></think><tool_call></tool_call><answer></answer>",
                               "Design a poster of the emblem of the Thabraler Athletic club. é ü"] * 3, 400)
    limits = AgentLimits(prompt="compact", max_rounds=3, max_tokens_per_turn=24, max_conversation_tokens=CACHE)
    cfg = tiny_config(vocab_size=tok.vocab_size)
    first = save_policy(Policy(Qwen3(cfg, rngs=nnx.Rngs(0)), tok, limits, SAMPLING), base / "first")
    second = save_policy(Policy(Qwen3(cfg, rngs=nnx.Rngs(1)), tok, limits, SAMPLING), base / "second")
    return first, second


@pytest.fixture(scope="module")
def server(folders):
    service = PolicyService(load_policy(folders[0]), name="tiny", num_slots=4, cache_len=CACHE, seed=SEED)
    with PolicyServer(service).start() as srv:
        yield srv


def _chat(server, content: str, **extra):
    body = {"model": "tiny", "messages": [{"role": "system", "content": "You are an agent."},
                                          {"role": "user", "content": content}], **extra}
    return requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)


def _direct(folder, content: str, seed: int, max_tokens: int):
    """The same turn from the policy's own slot sampler in this process (the reference answer)."""
    policy = load_policy(folder)
    ids = policy.tokenizer.render_chat([{"role": "system", "content": "You are an agent."},
                                        {"role": "user", "content": content}], add_generation_prompt=True).ids
    sampler = policy.sampler(1, CACHE, seed=SEED, sampling=SAMPLING)
    sampler.start(0, ids, max_tokens, seed=seed)
    turns = []
    while not turns:
        turns = sampler.step()
    return ids, turns[0]


def test_a_completion_equals_the_policys_own_sampler_token_for_token(server, folders):
    reply = _chat(server, "Design a poster.", seed=11, max_tokens=20, logprobs=True, return_token_ids=True,
                  temperature=1.0, top_p=0.9)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    ids, turn = _direct(folders[0], "Design a poster.", 11, 20)
    choice = data["choices"][0]
    assert data["prompt_token_ids"] == ids and choice["token_ids"] == turn.tokens
    got = [e["logprob"] for e in choice["logprobs"]["content"]]
    np.testing.assert_allclose(got, turn.logprobs, atol=1e-5)
    assert data["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(turn.tokens),
                             "total_tokens": len(ids) + len(turn.tokens)}
    tok = load_policy(folders[0]).tokenizer
    assert choice["message"]["content"] == tok.decode([t for t in turn.tokens if t != tok.eos_id])
    assert choice["finish_reason"] in ("stop", "length")


def test_concurrent_requests_batch_together_and_sample_what_they_sample_alone(server):
    prompts = [f"Design poster number {i}." for i in range(6)]
    alone = [_chat(server, p, seed=100 + i, max_tokens=24, return_token_ids=True).json()["choices"][0]["token_ids"]
             for i, p in enumerate(prompts)]
    before = server.service.batcher.most_running
    with cf.ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda a: _chat(server, a[1], seed=100 + a[0], max_tokens=24, return_token_ids=True),
                                 enumerate(prompts)))
    assert [r.json()["choices"][0]["token_ids"] for r in together] == alone
    assert server.service.batcher.most_running >= 2 and before <= server.service.batcher.most_running


def _events(reply) -> list:
    out = []
    for line in reply.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            out.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
    return out


def test_a_streamed_completion_adds_up_to_the_unstreamed_one(server):
    whole = _chat(server, "Design a poster.", seed=5, max_tokens=40, return_token_ids=True).json()
    with _chat(server, "Design a poster.", seed=5, max_tokens=40, stream=True, return_token_ids=True,
               stream_options={"include_usage": True}, **{}) as reply:
        assert reply.status_code == 200 and reply.headers["Content-Type"] == "text/event-stream"
        events = _events(reply)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    ids = [t for c in chunks for t in c["choices"][0].get("token_ids", [])]
    assert content == whole["choices"][0]["message"]["content"] and ids == whole["choices"][0]["token_ids"]
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) >= 2  # more than one piece
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert events[-2]["usage"]["completion_tokens"] == len(ids)


def test_reload_from_disk_switches_the_weights_between_requests(tmp_path, folders):
    service = PolicyService(load_policy(folders[0]), name="tiny", num_slots=2, cache_len=CACHE, seed=SEED)
    with PolicyServer(service).start() as srv:
        before = _chat(srv, "Design a poster.", seed=3, max_tokens=16, logprobs=True).json()
        reply = requests.post(f"{srv.url}/update_weights_from_disk", json={"model_path": str(folders[1])}, timeout=120)
        assert reply.status_code == 200 and reply.json()["success"] is True, reply.text
        after = _chat(srv, "Design a poster.", seed=3, max_tokens=16, logprobs=True, return_token_ids=True).json()
        bad = requests.post(f"{srv.url}/update_weights_from_disk", json={"model_path": str(tmp_path)}, timeout=60)
    _, turn = _direct(folders[1], "Design a poster.", 3, 16)
    assert after["choices"][0]["token_ids"] == turn.tokens
    np.testing.assert_allclose([e["logprob"] for e in after["choices"][0]["logprobs"]["content"]], turn.logprobs,
                               atol=1e-5)
    assert [e["logprob"] for e in before["choices"][0]["logprobs"]["content"]] != \
        [e["logprob"] for e in after["choices"][0]["logprobs"]["content"]]
    assert bad.status_code == 400 and "no config.json" in bad.json()["error"]["message"]


def test_requests_the_server_cannot_honour_are_refused_naming_the_field(server):
    hotter = _chat(server, "x", temperature=0.5)
    assert hotter.status_code == 400 and hotter.json()["error"]["param"] == "temperature"
    assert "samples at temperature=1.0" in hotter.json()["error"]["message"]
    assert _chat(server, "x", model="gpt-4.1").status_code == 404
    assert _chat(server, "x", n=2).json()["error"]["param"] == "n"
    too_long = _chat(server, "poster " * 3000)
    assert too_long.status_code == 400 and "cache holds 1024" in too_long.json()["error"]["message"]
    broken = requests.post(f"{server.url}/v1/chat/completions", data=b"{not json", timeout=30)
    assert broken.status_code == 400 and "not JSON" in broken.json()["error"]["message"]
    bad_part = requests.post(f"{server.url}/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": [{"type": "audio"}]}]})
    assert bad_part.status_code == 400 and "messages[0].content[0]" in bad_part.json()["error"]["message"]
    models = requests.get(f"{server.url}/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert _chat(server, "Design a poster.", seed=1, max_tokens=4).status_code == 200  # still serving


def test_an_api_error_reaches_the_client_with_its_reason(server):
    """gsjax's HTTP client (the openai agent's, the judge's) quotes an API's JSON error body."""
    from gsjax.agent.tools.http import HttpClient, HttpConfig, HttpFailure

    with pytest.raises(HttpFailure, match=r"HTTP 400 from .*samples at temperature=1\.0") as failure:
        HttpClient(HttpConfig(max_attempts=1)).post(f"{server.url}/v1/chat/completions", trusted=True, json_body={
            "model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 0.2})
    assert failure.value.status == 400


def test_the_openai_eval_agent_runs_its_episodes_against_the_served_policy(server, tmp_path):
    from gsjax import config as config_lib
    from gsjax.eval import cli
    from gsjax.world.build import build_world

    world = build_world(tmp_path / "world", seed=0, n_train_entities=28, n_eval_entities=12, n_train_prompts=20,
                        n_eval_prompts=10).root
    served = server.service.batcher.served
    cfg = config_lib.load("configs/eval_knowgen.py:test", workdir=str(tmp_path / "w"), data__world_dir=str(world),
                          agent__backend="openai", agent__base_url=f"{server.url}/v1", agent__model="tiny",
                          agent__key_env="", agent__temperature=1.0, agent__top_p=0.9, agent__max_tokens=24,
                          data__limit=2, eval__baseline=False, eval__report=False,
                          agent__limits__max_conversation_tokens=CACHE)
    summary = cli.run(cfg, progress=False)["openai-tiny"]
    records = [json.loads(x) for x in (tmp_path / "w/openai-tiny/results.jsonl").read_text().splitlines()]
    assert summary["recorded"] == 2 and "agent" not in summary["failure_kinds"], summary
    assert all(r["messages"][2]["role"] == "assistant" for r in records)  # the served policy's turns
    assert server.service.batcher.served >= served + 2
