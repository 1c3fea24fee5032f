"""Training end to end: the GRPO loop on the offline world, `python -m gsjax.train` killed with
SIGKILL and resumed, and the command line's errors."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flax import nnx

from gsjax.agent.policy import Policy
from gsjax.agent.protocol import AgentLimits
from gsjax.agent.tools import ToolsConfig, build_toolbox
from gsjax.data.formats import read_rl_data
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.rewards.compute import RewardComputer
from gsjax.rewards.generator import WorldGenerator
from gsjax.rewards.judge import WorldJudgeBackend
from gsjax.rl.loop import GRPOLoop, Prompt
from gsjax.rl.trainer import GRPOConfig, GRPOTrainer
from gsjax.sampling import SamplingParams
from gsjax.tokenizer import Tokenizer
from gsjax.world.build import build_preset

ROOT = Path(__file__).resolve().parents[1]
LIMITS = AgentLimits(prompt="compact", max_tokens_per_turn=48, max_conversation_tokens=1024, max_rounds=4)


def test_grpo_loop_on_the_world_compiles_each_shape_once(tmp_path):
    root = build_preset(tmp_path / "world", "tiny").root
    items = read_rl_data(root / "rl_data.json")[:2]
    tok = Tokenizer.train_bpe([it.prompt for it in items] * 3, 300)
    model = Qwen3(tiny_config(vocab_size=tok.vocab_size, hidden_size=32, num_heads=2, num_kv_heads=1,
                              head_dim=16, intermediate_size=64), rngs=nnx.Rngs(0))
    policy = Policy(model, tok, LIMITS, SamplingParams(temperature=1.0))
    trainer = GRPOTrainer(model, GRPOConfig(lr=1e-3, temperature=1.0, row_len=1024))
    sampler = policy.sampler(4, 1024, seed=0)
    tools = ToolsConfig(world_dir=str(root), image_dir=str(tmp_path / "img"), extractive_sentences=2)
    rewards = RewardComputer(WorldGenerator(root), WorldJudgeBackend(root), tmp_path / "gen")
    prompts = [Prompt(str(i.id), i.prompt, i.gt_image) for i in items]
    with build_toolbox(tools) as toolbox:
        loop = GRPOLoop(trainer, policy.engine(sampler, toolbox, datetime.date(2026, 1, 1)), rewards, group_size=2)
        steps = [loop.step(prompts, seed=s) for s in range(4)]
    shapes = {(m["micro_batches"], m["batch_rows"]) for m in steps}
    turns = {m["traj_tokens"] for m in steps}
    assert len(turns) > 1  # trajectories of different lengths and turn counts from step to step
    assert trainer.compiles == len(shapes)  # one learner compile per batch shape, none after
    assert set(sampler.compile_counts.values()) == {1}
    for m in steps:
        assert m["mismatch_abs"] < 1e-3  # the sampler's and learner's log-probabilities agree
        for key in ("reward", "image_reward", "text_reward", "clip_frac", "tool_calls", "sample_tokens_per_s"):
            assert key in m


def _train(workdir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gsjax.train", "--config=configs/grpo.py:test", f"--config.workdir={workdir}",
           "--config.rl.steps=6", "--config.rl.checkpoint_every=3", *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _grpo_records(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["phase"] == "grpo"]


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_resumes_with_identical_losses(tmp_path):
    workdir = tmp_path / "run"
    proc = _train(workdir)
    deadline = time.monotonic() + 600
    while not any(r["step"] == 5 for r in _grpo_records(workdir)):  # step 3's checkpoint is behind it
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "training did not reach GRPO step 5 in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r["step"]: r for r in _grpo_records(workdir)}

    rerun = _train(workdir)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out
    assert "GRPO: resuming after step 3" in out and "SFT: reusing" in out
    records = _grpo_records(workdir)
    redone = [r for r in records[len(before):] if r["step"] in before]
    assert [r["step"] for r in redone] == [4, 5]  # the steps after the last checkpoint, done again
    for r in redone:  # with the same prompts, the same rollouts and the same update
        old = before[r["step"]]
        assert r["loss"] == pytest.approx(old["loss"], abs=1e-6)
        assert r["reward"] == old["reward"] and r["traj_tokens"] == old["traj_tokens"]
    assert max(r["step"] for r in records) == 6
    summary = json.loads((workdir / "summary.json").read_text())
    assert set(summary["heldout"]) == {"no_search", "sft", "grpo"}
    assert (workdir / "policy_grpo" / "agent.json").is_file()
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_a_config_key_that_does_not_exist_names_the_nearest_valid_keys():
    proc = subprocess.run([sys.executable, "-m", "gsjax.train", "--config.rl.grup_size=3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no key 'rl.grup_size'" in proc.stderr and "rl.group_size" in proc.stderr
    assert "Traceback" not in proc.stderr
