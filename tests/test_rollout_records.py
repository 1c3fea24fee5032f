"""Every rollout on record: a GRPO step writes `step_0001.jsonl` (one line per trajectory, with its
conversation, answer, reward parts, judge rationales and the advantage the learner used), a redone
step replaces it, and `gsjax.eval.rollout_report` shows a step's groups side by side. (A whole
`gsjax.train` run's files: tests/test_export.py; two processes and a resume after SIGKILL:
tests/test_multihost.py.)"""

from __future__ import annotations

import datetime
import html
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from gsjax.agent.protocol import AgentLimits
from gsjax.agent.rollout import RolloutEngine
from gsjax.agent.tools import ToolsConfig, build_toolbox
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.rewards.compute import RewardComputer
from gsjax.rewards.generator import WorldGenerator
from gsjax.rewards.judge import WorldJudgeBackend
from gsjax.rl.grpo import group_advantages
from gsjax.rl.loop import GRPOLoop, Prompt
from gsjax.rl.trainer import GRPOConfig, GRPOTrainer
from gsjax.sampling import FinishReason, Turn
from gsjax.tokenizer import Tokenizer
from gsjax.world.build import build_preset
from gsjax.world.expert import solve
from gsjax.world.prompts import read_truth

TODAY = datetime.date(2026, 1, 1)
LIMITS = AgentLimits(prompt="compact")
G = 3


class GroupScripts:
    """The Sampler's slot interface replaying scripts: the k-th episode started on a prompt replays
    that prompt's k-th list of assistant texts (its group index k: the engine starts a prompt's
    samples in order)."""

    def __init__(self, tok: Tokenizer, scripts: dict[str, list[list[str]]], num_slots: int = 4, cache_len: int = 20000):
        self.tok, self.scripts, self.num_slots, self.cache_len = tok, scripts, num_slots, cache_len
        self.started: Counter = Counter()
        self.queue: dict[int, list[str]] = {}
        self.due: set[int] = set()  # slots whose next turn is asked for

    def update_weights(self, model) -> None:
        pass

    def release(self) -> None:
        pass

    def start(self, slot, ids, max_new_tokens, seed=None, images=None):
        prompt = next(p for p in self.scripts if p in self.tok.decode(ids))
        self.queue[slot] = list(self.scripts[prompt][self.started[prompt] % G])
        self.started[prompt] += 1
        self.due.add(slot)

    def append(self, slot, ids, max_new_tokens, images=None):
        self.due.add(slot)

    @property
    def busy(self):
        return bool(self.due)

    def step(self):
        turns = []
        for slot in sorted(self.due):
            ids = self.tok.encode(self.queue[slot].pop(0))
            turns.append(Turn(slot, ids, [-0.5] * len(ids), FinishReason.STOP_STRING, "</tool_call>"))
        self.due.clear()
        return turns

    def free(self, slot):
        self.queue.pop(slot, None)


@pytest.fixture(scope="module")
def step_dir(tmp_path_factory):
    """One GRPO step of 3 prompts x 3 samples, recorded, and the step redone with the same number.
    Sample 0 and 2 replay the expert (tool calls, an answer: judged), sample 1 answers at once
    citing images it never saw (reward 0 by rule); the third prompt's ground truth is missing, so
    its judged samples fail (out of the group statistics)."""
    tmp = tmp_path_factory.mktemp("records")
    root = build_preset(tmp / "world", "tiny").root
    keys = [k for k in read_truth(root / "truth.json").values() if k.split == "train"][:3]
    tools = ToolsConfig(world_dir=str(root), image_dir=str(tmp / "img"), extractive_sentences=2)
    with build_toolbox(tools) as toolbox:
        episodes = [solve(k, toolbox.run, TODAY, LIMITS, top_k=1, image_top_k=1).episode for k in keys]
        experts = [[m["content"] for m in e.messages if m["role"] == "assistant"] for e in episodes]
        tok = Tokenizer.train_bpe([m["content"] for e in episodes for m in e.messages], 1024)  # ~850 tokens each
        scripts = {k.prompt: [e, e[-1:], e] for k, e in zip(keys, experts)}
        prompts = [Prompt(k.id, k.prompt, str(root / k.gt_image)) for k in keys[:2]]
        prompts.append(Prompt(keys[2].id, keys[2].prompt, str(tmp / "missing.png")))
        model = Qwen3(tiny_config(vocab_size=tok.vocab_size, hidden_size=32, num_heads=2, num_kv_heads=1,
                                  head_dim=16, intermediate_size=64), rngs=nnx.Rngs(0))
        trainer = GRPOTrainer(model, GRPOConfig(lr=1e-3, temperature=1.0, row_len=1024))
        engine = RolloutEngine(GroupScripts(tok, scripts), tok, toolbox, limits=LIMITS, today=TODAY)
        rewards = RewardComputer(WorldGenerator(root), WorldJudgeBackend(root), tmp / "gen")
        loop = GRPOLoop(trainer, engine, rewards, G, rollouts_dir=tmp / "rollouts")
        metrics = loop.step(prompts, seed=7, number=1)
        first = (tmp / "rollouts" / "step_0001.jsonl").read_text()
        redone = loop.step(prompts, seed=7, number=1)  # as after a resume: the same step again
    return tmp / "rollouts", metrics, redone, first


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_step_records_one_line_per_trajectory_with_the_advantage_the_learner_used(step_dir):
    rollouts, metrics, _, _ = step_dir
    recs = _records(rollouts / "step_0001.jsonl")
    assert len(recs) == 3 * G
    by_prompt = defaultdict(list)
    for r in recs:
        by_prompt[r["prompt_id"]].append(r["group_index"])
    assert list(by_prompt.values()) == [[0, 1, 2]] * 3
    assert {r["step"] for r in recs} == {1}
    assert [r["termination"] for r in recs[:3]] == ["answer", "parse_failed", "answer"]
    assert [r["status"] for r in recs] == (["scored", "zero_by_rule", "scored"] * 2
                                           + ["failed", "zero_by_rule", "failed"])
    # The learner's advantages, recomputed from the recorded rewards with grpo's own function.
    groups = np.array([r["prompt_id"] for r in recs])
    expected = group_advantages(np.array([r["learner_reward"] for r in recs]), groups,
                                np.array([r["in_group_statistics"] for r in recs]))
    adv = np.array([r["advantage"] for r in recs])
    in_update = np.array([r["in_update"] for r in recs])
    np.testing.assert_allclose(adv, np.where(in_update, expected, 0.0), atol=1e-6)
    assert (adv[:3] != 0).all() and adv[0] > 0 > adv[1]  # the expert's samples above the one that gave up
    assert not in_update[6:].any()  # a lone valid sample: nothing to compare it with
    assert metrics["update_samples"] == in_update.sum()
    assert metrics["advantage_abs_mean"] == pytest.approx(np.abs(adv).mean(), abs=1e-6)


def test_the_recorded_reward_parts_are_the_step_metrics(step_dir):
    rollouts, metrics, _, _ = step_dir
    recs = _records(rollouts / "step_0001.jsonl")
    ok = [r for r in recs if r["status"] != "failed"]
    assert metrics["reward"] == pytest.approx(np.mean([r["reward"] for r in ok]))
    assert metrics["image_reward"] == pytest.approx(np.mean([r["image_part"] for r in ok
                                                             if r["image_part"] is not None]))
    assert metrics["text_reward"] == pytest.approx(np.mean([r["text_part"] for r in ok if r["text_part"] is not None]))
    assert metrics["failed"] == sum(r["status"] == "failed" for r in recs)
    expert = recs[0]
    assert expert["image_judge"]["rationale"] and expert["text_judge"]["rationale"]  # the judges' reasons
    assert expert["generated"] and Path(expert["generated"]).is_file()
    assert recs[6]["reason"].startswith("ground truth image missing")
    # The conversation, its tool calls with the images they showed, and the answer's references.
    calls = expert["tool_calls"]
    assert calls and all(expert["messages"][c["message"]]["role"] == "assistant" for c in calls)
    assert all("<tool_response>" in expert["messages"][c["message"] + 1]["content"] for c in calls)
    shown = {s["img_id"] for s in expert["shown"]}
    assert any(c["images"] for c in calls) and {i for c in calls for i in c["images"]} <= shown
    assert expert["answer"]["gen_prompt"] and {r["img_id"] for r in expert["answer"]["references"]} <= shown
    assert recs[1]["answer"] is None and recs[1]["tool_calls"] == []


def test_a_redone_step_replaces_its_file(step_dir):
    rollouts, _, redone, first = step_dir
    assert sorted(p.name for p in rollouts.iterdir()) == ["step_0001.jsonl"]  # no temporary file left behind
    again = _records(rollouts / "step_0001.jsonl")
    assert len(again) == 3 * G  # replaced, not appended to

    def same(records):  # what the redone step did again (the tools' latencies differ)
        return [(r["prompt_id"], r["group_index"], r["messages"], r["reward"], r["advantage"]) for r in records]

    assert same(again) == same([json.loads(line) for line in first.splitlines()])


def test_a_loop_recording_rollouts_needs_the_step_number(tmp_path):
    loop = GRPOLoop(None, None, None, G, rollouts_dir=tmp_path)  # refused before anything runs
    with pytest.raises(ValueError, match="needs the step's number"):
        loop.step([], seed=0)


def test_the_report_shows_a_group_side_by_side_with_its_advantages(step_dir, tmp_path):
    from gsjax.eval.rollout_report import main

    rollouts = step_dir[0]
    recs = _records(rollouts / "step_0001.jsonl")
    out = tmp_path / "step.html"
    main([str(rollouts / "step_0001.jsonl"), "--out", str(out)])
    page = out.read_text()
    assert page.count('<section class="group"') == 3
    assert page.count("grid-template-columns:repeat(3,") == 3  # G columns per prompt
    for r in recs:
        cls = "zero" if not r["in_update"] or r["advantage"] == 0 else "pos" if r["advantage"] > 0 else "neg"
        assert f'<div class="adv {cls}" title="advantage">{r["advantage"]:+.3f}</div>' in page
    assert 'class="adv pos"' in page and 'class="adv neg"' in page
    assert html.escape(recs[0]["image_judge"]["rationale"]) in page
    assert html.escape(recs[0]["answer"]["gen_prompt"]) in page
    assert "out of the group statistics" in page and "data:image/png;base64," in page
    with pytest.raises(SystemExit, match="no such rollouts file"):
        main([str(rollouts / "step_0009.jsonl")])
