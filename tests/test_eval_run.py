"""Evaluation runs on a tiny offline world: agents vs the no-search baseline, bad input recorded as
item failures, kill and resume, the OpenAI-compatible agent over loopback, a tiny JAX policy,
the WISE smoke run, the HTML report in headless Chromium."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gsjax import config as config_lib
from gsjax.agent.types import Termination
from gsjax.bench.loopback_servers import JudgeServer, LoopbackServer, world_verdicts
from gsjax.data.formats import read_knowgen
from gsjax.eval import cli
from gsjax.world.build import build_world
from gsjax.world.prompts import read_truth

ROOT = Path(__file__).resolve().parents[1]
KNOWGEN = "configs/eval_knowgen.py:test"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_world(root, seed=0, n_train_entities=28, n_eval_entities=12, n_train_prompts=20, n_eval_prompts=10)
    return root


def _cfg(world, workdir, **overrides):
    return config_lib.load(KNOWGEN, workdir=str(workdir), data__world_dir=str(world), **overrides)


@pytest.fixture(scope="module")
def expert_run(world, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("eval")
    return workdir, cli.run(_cfg(world, workdir), progress=False)


def test_expert_beats_the_no_search_baseline_and_both_are_reported(expert_run, capsys):
    workdir, summaries = expert_run
    assert list(summaries) == ["none", "expert"]
    none, expert = summaries["none"], summaries["expert"]
    assert none["recorded"] == expert["recorded"] == 10 and none["failed"] == expert["failed"] == 0
    assert expert["k_score"] > none["k_score"] + 0.5
    assert none["k_score"] == none["k_score_strict"] and none["answered"] is None  # no episodes ran
    assert expert["answered"] == 1.0 and expert["tool_calls"] >= 3
    assert json.loads((workdir / "expert" / "summary.json").read_text())["k_score"] == expert["k_score"]
    assert (workdir / "expert" / "report.html").is_file()


def _write_rows(path, rows):
    path.write_text(json.dumps(rows))
    return path


def test_bad_rows_missing_and_unreadable_images_are_item_failures_and_the_run_goes_on(world, tmp_path, capsys):
    items = read_knowgen(world / "knowgen_eval.json")[:3]
    unreadable = tmp_path / "broken.png"
    unreadable.write_text("this is not a PNG")
    row = lambda it, **kw: {"id": it.id, "prompt": it.prompt, "gt_image": it.gt_image,  # noqa: E731
                            "meta": {"category": it.category, "difficulty": it.difficulty}} | kw
    rows = [row(items[0]), {k: v for k, v in row(items[1]).items() if k != "prompt"},
            row(items[1], gt_image=str(tmp_path / "nowhere.png")), row(items[2], gt_image=str(unreadable))]
    bench = _write_rows(tmp_path / "bench.json", rows)
    summaries = cli.run(_cfg(world, tmp_path / "w", data__benchmark=str(bench)), progress=False)
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "w/expert/results.jsonl").read_text().splitlines())}
    assert len(records) == 4 and records[items[0].id]["status"] == "scored"
    assert f"{bench}: row 1: field 'prompt': expected a non-empty string, it is missing" in records["row1"]["error"]
    assert records[items[1].id]["error"].startswith("ground truth image missing: ")
    assert "unreadable image" in records[items[2].id]["error"]
    s = summaries["expert"]
    assert s["failed"] == 3 and s["invalid_rows"] == 1
    assert s["k_score_strict"] < s["k_score"]  # two failures with a category count as 0 when strict
    assert s["reference"]["n_items"] == 3 and s["reference"]["n_failed"] == 2
    assert s["failure_kinds"] == {"bad benchmark row": 1, "ground truth image missing": 1, "judge": 1}
    assert "expert: 3 failed items (bad benchmark row 1, ground truth image missing 1, judge 1)" in capsys.readouterr().out


def _eval_cmd(world, workdir, judge_url):
    return [sys.executable, "-m", "gsjax.eval", f"--config={KNOWGEN}", f"--config.workdir={workdir}",
            f"--config.data.world_dir={world}", "--config.reward.judge=openai",
            f"--config.reward.judge_base_url={judge_url}/v1", "--config.reward.judge_key_env=",
            "--config.eval.concurrency=1", "--config.eval.baseline=false", "--config.eval.report=false"]


def test_a_killed_evaluation_resumes_to_the_uninterrupted_summary_judging_no_item_twice(world, tmp_path):
    judged: list[str] = []
    base = world_verdicts(world)
    lock = threading.Lock()

    def verdicts(kind, sample_id, text, images):
        with lock:
            judged.append(sample_id)
        return base(kind, sample_id, text, images)

    with JudgeServer(latency_s=0.3, verdicts=verdicts) as server:
        results = tmp_path / "killed/expert/results.jsonl"
        proc = subprocess.Popen(_eval_cmd(world, tmp_path / "killed", server.url), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if results.is_file() and len(results.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        recorded_before = [json.loads(line)["id"] for line in results.read_text().splitlines() if line.strip()]
        assert 3 <= len(recorded_before) < 10
        subprocess.run(_eval_cmd(world, tmp_path / "killed", server.url), cwd=ROOT, check=True, capture_output=True)
        interrupted_calls = list(judged)
        judged.clear()
        subprocess.run(_eval_cmd(world, tmp_path / "whole", server.url), cwd=ROOT, check=True, capture_output=True)
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 10  # every item recorded exactly once
    for item_id in recorded_before:  # recorded before the kill: judged once, never again
        assert interrupted_calls.count(item_id) == 1, item_id
    assert len(interrupted_calls) <= 10 + 1  # at most the one item in flight at the kill is judged again
    summary = lambda d: json.loads((tmp_path / d / "expert/summary.json").read_text())  # noqa: E731
    assert summary("killed") == summary("whole")
    assert sorted(judged) == sorted(ids)  # the uninterrupted run: one judge call per item


class ScriptedChatServer(LoopbackServer):
    """An OpenAI-compatible chat endpoint standing in for a model: for a world prompt it searches an
    image of the subject, then answers with the key's gen_prompt and the first image shown."""

    def __init__(self, keys):
        super().__init__()
        self.by_prompt = {k.prompt: k for k in keys.values()}
        self.bodies = []
        self.total_tokens = None  # the usage each reply reports (None: none)

    def _answer(self, h, body, fault, n):
        request = json.loads(body)
        with self._lock:
            self.bodies.append(request)
        messages = request["messages"]
        key = self.by_prompt[messages[1]["content"]]
        if sum(m["role"] == "assistant" for m in messages) == 0:
            content = ('<think>Find the subject.</think>\n<tool_call>{"name": "image_search", "arguments": '
                       f'{{"query": "{key.names[0]}", "top_k": 1}}}}</tool_call>')
        else:
            answer = {"gen_prompt": key.gen_prompt, "reference_images": [{"img_id": "IMG_001", "note": key.names[0]}]}
            content = f"<think>Done.</think>\n<answer>{json.dumps(answer)}</answer>"
        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
        if self.total_tokens is not None:
            reply["usage"] = {"prompt_tokens": self.total_tokens - 10, "completion_tokens": 10,
                              "total_tokens": self.total_tokens}
        self._send(h, 200, json.dumps(reply).encode())


def test_openai_compatible_agent_runs_the_episode_with_images_as_image_url_parts(world, tmp_path, monkeypatch):
    keys = {k: v for k, v in read_truth(world / "truth.json").items() if v.split == "eval" and len(v.names) == 1}
    single = [it for it in read_knowgen(world / "knowgen_eval.json") if it.id in keys][:2]
    bench = _write_rows(tmp_path / "bench.json", [
        {"id": it.id, "prompt": it.prompt, "gt_image": it.gt_image,
         "meta": {"category": it.category, "difficulty": it.difficulty}} for it in single])
    monkeypatch.setenv("GSJAX_TEST_AGENT_KEY", "sk-agent-test")
    with ScriptedChatServer(keys) as server:
        cfg = _cfg(world, tmp_path / "w", data__benchmark=str(bench), agent__backend="openai",
                   agent__base_url=server.url + "/v1", agent__model="scripted", agent__key_env="GSJAX_TEST_AGENT_KEY",
                   eval__baseline=False)
        summaries = cli.run(cfg, progress=False)
    s = summaries["openai-scripted"]
    assert s["recorded"] == 2 and s["failed"] == 0 and s["answered"] == 1.0 and s["tool_calls"] == 1.0
    second = [b for b in server.bodies if len(b["messages"]) > 3][0]
    tool_response = second["messages"][3]["content"]
    assert tool_response[0]["type"] == "text" and "<tool_response>" in tool_response[0]["text"]
    assert tool_response[1]["type"] == "image_url" and tool_response[1]["image_url"]["url"].startswith("data:image/jpeg")
    assert set(server.authorizations) == {"Bearer sk-agent-test"}
    assert second["temperature"] == 0.6 and second["model"] == "scripted"


def test_an_openai_agents_conversation_ends_at_its_token_limit_as_the_endpoint_counts_it(world, tmp_path):
    keys = {k: v for k, v in read_truth(world / "truth.json").items() if v.split == "eval" and len(v.names) == 1}
    single = [it for it in read_knowgen(world / "knowgen_eval.json") if it.id in keys][:1]
    bench = _write_rows(tmp_path / "bench.json", [
        {"id": it.id, "prompt": it.prompt, "gt_image": it.gt_image,
         "meta": {"category": it.category, "difficulty": it.difficulty}} for it in single])
    with ScriptedChatServer(keys) as server:
        server.total_tokens = 1500  # past agent.limits.max_conversation_tokens (1024) after the first turn
        cfg = _cfg(world, tmp_path / "w", data__benchmark=str(bench), agent__backend="openai", agent__key_env="",
                   agent__base_url=server.url + "/v1", agent__model="scripted", eval__baseline=False)
        s = cli.run(cfg, progress=False)["openai-scripted"]
    record = json.loads((tmp_path / "w/openai-scripted/results.jsonl").read_text().splitlines()[0])
    assert record["termination"] == "max_tokens" and record["tool_calls"] == 0 and s["failed"] == 0
    assert len(server.bodies) == 1  # no second call with a prompt past the limit


def test_policy_backend_runs_a_policy_folder(world, tmp_path):
    from flax import nnx

    from gsjax.agent.policy import Policy, save_policy
    from gsjax.agent.protocol import AgentLimits
    from gsjax.models.qwen3 import Qwen3, tiny_config
    from gsjax.tokenizer import Tokenizer

    texts = [it.prompt for it in read_knowgen(world / "knowgen_eval.json")] * 3
    tok = Tokenizer.train_bpe(texts + ["<think></think><tool_call></tool_call><answer></answer>"], 512)
    folder = save_policy(Policy(Qwen3(tiny_config(vocab_size=tok.vocab_size), rngs=nnx.Rngs(0)), tok,
                                AgentLimits(prompt="compact", max_rounds=2, max_tokens_per_turn=24,
                                            max_conversation_tokens=512)), tmp_path / "policy")
    cfg = _cfg(world, tmp_path / "w", agent__backend="policy", agent__policy=str(folder), agent__num_slots=3,
               agent__cache_len=512, data__limit=3, eval__baseline=False)
    summaries = cli.run(cfg, progress=False)
    records = [json.loads(x) for x in (tmp_path / "w/policy-policy/results.jsonl").read_text().splitlines()]
    assert summaries["policy-policy"]["recorded"] == 3 and len(records) == 3
    assert {r["termination"] for r in records} <= {t.value for t in Termination}
    # a random policy does not answer: the original prompt goes to the generator, which still draws
    for r in records:
        assert r["status"] == "scored" or r["error"], r
        assert r["messages"][0]["role"] == "system"


def test_policy_limits_override_the_policy_folders_own_count_by_count(world, tmp_path):
    """agent.limits is for the expert and openai agents; a policy runs under its agent.json's limits
    except where agent.policy_limits names a count (0 keeps it)."""
    import datetime

    from flax import nnx

    from gsjax.agent.policy import Policy, save_policy
    from gsjax.agent.protocol import AgentLimits
    from gsjax.eval.agents import build_agent
    from gsjax.models.qwen3 import Qwen3, tiny_config
    from gsjax.tokenizer import Tokenizer

    tok = Tokenizer.train_bpe(["<think></think><tool_call></tool_call><answer></answer>"], 300)
    recorded = AgentLimits(prompt="compact", max_rounds=2, max_tokens_per_turn=24, max_conversation_tokens=512)
    folder = save_policy(Policy(Qwen3(tiny_config(vocab_size=tok.vocab_size), rngs=nnx.Rngs(0)), tok, recorded),
                         tmp_path / "policy")
    today = datetime.date(2026, 1, 1)

    def agent(**over):
        cfg = _cfg(world, tmp_path / "w", agent__backend="policy", agent__policy=str(folder), agent__num_slots=2,
                   agent__cache_len=64, **{f"agent__policy_limits__{k}": v for k, v in over.items()})
        return build_agent(cfg.agent, None, world, today)

    assert agent().limits == recorded  # every count 0: the folder's own (agent.limits says 1024 tokens, 9 rounds)
    longer = agent(max_conversation_tokens=1536, max_tokens_per_turn=32)
    assert longer.limits == AgentLimits(prompt="compact", max_rounds=2, max_tokens_per_turn=32,
                                        max_conversation_tokens=1536)
    assert longer.engine.limits == longer.limits  # what the episodes run under
    with pytest.raises(ValueError, match=r"agent\.policy_limits\.max_rounds must be a positive int.*-1"):
        agent(max_rounds=-1)


def test_a_policy_is_shown_image_paths_as_its_agent_json_says_it_was_trained_to_read_them(world, tmp_path):
    from flax import nnx

    from gsjax.agent.policy import Policy, load_policy, recorded_local_path, save_policy
    from gsjax.agent.types import ImageRegistry, ToolCall
    from gsjax.models.qwen3 import Qwen3, tiny_config
    from gsjax.tokenizer import Tokenizer

    tok = Tokenizer.train_bpe(["<think></think><tool_call></tool_call><answer></answer>"], 300)
    model = Qwen3(tiny_config(vocab_size=tok.vocab_size), rngs=nnx.Rngs(0))
    folder = save_policy(Policy(model, tok, local_path="name"), tmp_path / "policy")
    assert recorded_local_path(folder) == "name" and load_policy(folder).local_path == "name"
    assert recorded_local_path(tmp_path) == "full"  # no agent.json: a real checkpoint, the reference's view
    query = next(iter(read_truth(world / "truth.json").values())).names[0]
    shown = {}
    for override in ("", "full"):
        cfg = _cfg(world, tmp_path / "eval_run", agent__backend="policy", agent__policy=str(folder),
                   tools__local_path=override)
        with cli._toolbox(cfg, world) as toolbox:
            result = toolbox.run(ToolCall("image_search", {"query": query, "top_k": 1}), ImageRegistry())
        path = result.images[0].path
        assert Path(path).parent == tmp_path / "eval_run" / "tool_images"
        shown[override] = [line.strip() for line in result.text.splitlines() if "local_path:" in line]
    assert shown[""] == [f"local_path: {Path(path).name}"]  # no "eval_run" for the copying heads to match
    assert shown["full"] == [f"local_path: {path}"]


def test_wise_offline_smoke_run_scores_both_protocols(world, tmp_path):
    cats = ["Cultural knowledge", "time", "Space", "Biology", "Physical Knowledge", "Chemistry"]
    rows = [{"Prompt": f"A poster about thing {i}", "Explanation": f"This refers to thing {i}, a sample",
             "Category": c, "Subcategory": "x", "prompt_id": i + 1} for i, c in enumerate(cats)]
    rows.append({"Prompt": "", "Explanation": "e", "Category": "time", "Subcategory": "x", "prompt_id": 9})
    bench = _write_rows(tmp_path / "wise.json", rows)
    cfg = config_lib.load("configs/eval_wise.py:test", workdir=str(tmp_path / "w"),
                          data__world_dir=str(world), data__benchmark=str(bench))
    s = cli.run(cfg, progress=False)["none"]
    assert s["recorded"] == 7 and s["failed"] == 1 and s["invalid_rows"] == 1
    for protocol in ("paper", "verified"):
        assert s[protocol]["overall"] is not None and 0.0 <= s[protocol]["overall"] <= 1.0
    # the baseline's prompt names "thing i" itself, so the smoke judge finds the referent
    assert s["paper"]["reference"]["categories"]["time"]["mean"] > 0


def test_wise_with_an_openai_compatible_judge_sends_prompt_explanation_and_image_and_scores_both_protocols(
        world, tmp_path, monkeypatch):
    cats = ["Cultural knowledge", "time", "Space", "Biology", "Physical Knowledge", "Chemistry"]
    rows = [{"Prompt": f"A poster about thing {i}", "Explanation": f"This refers to thing {i}, a sample",
             "Category": c, "Subcategory": "x", "prompt_id": i} for i, c in enumerate(cats, 1)]
    bench = _write_rows(tmp_path / "wise.json", rows)
    seen = []

    def verdicts(kind, sample_id, text, images):
        seen.append((sample_id, text, len(images)))
        pid = int(sample_id)
        return {"rationale": "r", "consistency": pid % 3, "realism": 1, "aesthetic_quality": 2, "verified": int(pid % 2 == 0)}

    monkeypatch.setenv("GSJAX_TEST_WISE_KEY", "sk-wise-test")
    with JudgeServer(verdicts=verdicts, api_key="sk-wise-test") as server:
        cfg = config_lib.load("configs/eval_wise.py:test", workdir=str(tmp_path / "w"),
                              data__world_dir=str(world), data__benchmark=str(bench), reward__judge="openai",
                              reward__judge_base_url=server.url + "/v1", reward__judge_key_env="GSJAX_TEST_WISE_KEY",
                              reward__judge_model="wise-judge")
        s = cli.run(cfg, progress=False)["none"]
    assert s["failed"] == 0 and len(seen) == 6 and set(server.models) == {"wise-judge"}
    sample, text, n_images = [x for x in seen if x[0] == "3"][0]
    assert n_images == 1 and "A poster about thing 3" in text and "This refers to thing 3, a sample" in text
    # consistency 1, 2, 0, 1, 2, 0 with realism 1 and aesthetic 2: items 0.55, 0.9, 0.2, 0.55, 0.9, 0.2
    assert s["paper"]["overall"] == pytest.approx(0.4 * 0.55 + 0.167 * 0.9 + 0.133 * 0.2 + 0.1 * (0.55 + 0.9 + 0.2))
    assert s["verified"]["overall"] == pytest.approx(0.12 * 3)  # time, biology and chemistry verified


def test_wise_without_a_prompt_file_says_which_file_to_give(world, tmp_path):
    cfg = config_lib.load("configs/eval_wise.py:test", workdir=str(tmp_path / "w"),
                          data__world_dir=str(world), data__benchmark="")
    with pytest.raises(ValueError, match=r"a WISE prompt file is needed .*--config.data.benchmark="):
        cli.run(cfg, progress=False)
    missing = config_lib.load("configs/eval_wise.py:test", workdir=str(tmp_path / "w"),
                              data__world_dir=str(world), data__benchmark=str(tmp_path / "nowhere.json"))
    with pytest.raises(FileNotFoundError, match="nowhere.json' does not exist"):
        cli.run(missing, progress=False)


def test_report_lists_each_tool_call_with_its_queries_or_url():
    from gsjax.eval.report import _calls

    call = lambda body: {"role": "assistant", "content": f"<think>t</think>\n<tool_call>{body}</tool_call>"}  # noqa: E731
    messages = [{"role": "user", "content": "prompt"},
                call('{"name": "search", "arguments": {"queries": ["a b", "c"], "top_k": 1}}'),
                call('{"name": "browse", "arguments": {"url": "http://x.test/p", "query": "what does it look like"}}'),
                call('{"name": "image_search", "arguments": {"query": "emblem"}}'), call("{not json"),
                {"role": "assistant", "content": "<answer>{}</answer>"}]
    assert _calls(messages) == ["search: a b; c", "browse: http://x.test/p (looking for: what does it look like)",
                                "image_search: emblem", "unreadable tool call"]


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH: `make test` installs it (apt-get install chromium)")
def test_html_report_renders_images_tables_and_charts_in_headless_chromium(expert_run, tmp_path):
    workdir, summaries = expert_run
    report = workdir / "expert" / "report.html"
    records = [json.loads(x) for x in (workdir / "expert/results.jsonl").read_text().splitlines()]
    args = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2400"]
    dom = subprocess.run(args + ["--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120,
                         env=os.environ | {"HOME": str(tmp_path)}).stdout
    refs = sum(len(r["answer"]["references"]) for r in records if r["answer"])
    assert dom.count("<img") == 3 * len(records) + refs  # generated, ground truth, baseline, chosen references
    assert dom.count('class="item ') == len(records)
    categories = dom.split('class="categories"')[1].split("</table>")[0]
    assert categories.count("<tr>") == 1 + len(summaries["expert"]["reference"]["categories"])
    assert dom.count('class="bar"') == 2 * len(summaries["expert"]["reference"]["categories"])
    shot = tmp_path / "shot.png"
    subprocess.run(args + [f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120, check=True,
                   env=os.environ | {"HOME": str(tmp_path)})
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.int16)
    assert pixels.shape[:2] == (2400, 1200)
    assert (np.abs(pixels - 255).sum(axis=-1) > 30).mean() > 0.05  # not a blank page
    bars = np.abs(pixels - np.array([74, 123, 208])).sum(axis=-1) < 30  # the agent's bars
    assert bars.sum() > 500
    rows = np.nonzero(np.abs(np.diff(pixels, axis=1)).sum(axis=-1).sum(axis=1) > 2000)[0]
    assert rows.size > 200  # many rows with detail: tables, text and embedded pictures drawn
    chroma = pixels.max(axis=-1) - pixels.min(axis=-1)
    assert (chroma > 80).sum() > 2000  # saturated pixels from the embedded images
