"""Training end to end: the GRPO loop on the offline world and the command line's errors. (A run of
`python -m gsjax.train` killed with SIGKILL and resumed, on one process and on two:
tests/test_multihost.py.)"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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
        steps = []
        for s in range(4):
            steps.append(loop.step(prompts, seed=s))
            assert sampler.released  # its weights copy and cache are let go during each update
    shapes = {(m["micro_batches"], m["batch_rows"]) for m in steps}
    turns = {m["traj_tokens"] for m in steps}
    assert len(turns) > 1  # trajectories of different lengths and turn counts from step to step
    assert trainer.compiles == len(shapes)  # one learner compile per batch shape, none after
    assert set(sampler.compile_counts.values()) == {1}
    for m in steps:
        assert m["mismatch_abs"] < 1e-3  # the sampler's and learner's log-probabilities agree
        for key in ("reward", "image_reward", "text_reward", "clip_frac", "tool_calls", "sample_tokens_per_s"):
            assert key in m


def test_a_config_key_that_does_not_exist_names_the_nearest_valid_keys():
    proc = subprocess.run([sys.executable, "-m", "gsjax.train", "--config.rl.grup_size=3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no key 'rl.grup_size'" in proc.stderr and "rl.group_size" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_step_summary_reports_the_policy_entropy_and_response_length():
    """`entropy` is the mean -log p of the tokens the sampler drew (the policy's own turns only, not
    the prompt or tool tokens around them) and `response_tokens` how many it drew per episode."""
    from gsjax.agent.episode import Termination
    from gsjax.agent.rollout import Task, Trajectory
    from gsjax.rewards.compute import ScoredEpisode
    from gsjax.rewards.score import scored
    from gsjax.rl.loop import episode_stats, summarize

    def traj(sampled, logprobs):
        return Trajectory(Task("p", "q"), list(range(len(sampled))), list(sampled), list(sampled), list(logprobs),
                          [], [], [], Termination.ANSWER, None, 1, 0)

    trajs = [traj([0, 0, 1, 1, 0], [0.0, 0.0, -1.0, -3.0, 0.0]),  # prompt, two drawn tokens, a tool token
             traj([0, 1, 1, 1, 1], [0.0, -0.5, -0.5, -0.5, -0.5])]
    summary = summarize(episode_stats(trajs, [ScoredEpisode(scored(0.5, 0.5))] * 2))
    assert summary["response_tokens"] == 3.0  # (2 + 4) / 2 episodes
    assert abs(summary["entropy"] - (1.0 + 3.0 + 4 * 0.5) / 6) < 1e-9  # per drawn token, pooled
    assert summary["traj_tokens"] == 5.0


def test_a_torn_last_metrics_line_is_skipped_when_read_and_cut_before_the_next_write(tmp_path, caplog):
    from gsjax import metrics as metrics_lib

    log = metrics_lib.MetricsLog(tmp_path)
    log.write("grpo", 1, {"reward": 0.5})
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"phase": "grpo", "step": 2, "rew')  # a kill in the middle of step 2's write
    with caplog.at_level("WARNING"):
        assert metrics_lib.read(tmp_path / "metrics.jsonl") == [{"phase": "grpo", "step": 1, "reward": 0.5}]
    assert "metrics.jsonl line 2: not a whole metrics record" in caplog.text
    log = metrics_lib.MetricsLog(tmp_path)  # the rerun: the torn tail goes, step 2 is redone on a line of its own
    log.write("grpo", 2, {"reward": 0.25})
    log.close()
    assert (tmp_path / "metrics.jsonl").read_text().splitlines()[1] == '{"phase": "grpo", "step": 2, "reward": 0.25}'
    assert [r["reward"] for r in metrics_lib.read(tmp_path / "metrics.jsonl")] == [0.5, 0.25]


def test_a_step_whose_every_reward_failed_reports_nan_not_a_zero_reward():
    from gsjax.agent.episode import Termination
    from gsjax.agent.rollout import Task, Trajectory
    from gsjax.rewards.compute import ScoredEpisode
    from gsjax.rewards.score import failed, scored
    from gsjax.rl.loop import episode_stats, summarize

    trajs = [Trajectory(Task("p", "q"), [1, 2], [0, 1], [0, 1], [0.0, -1.0], [], [], [], Termination.ANSWER, None, 1, 0)] * 2
    all_failed = summarize(episode_stats(trajs, [ScoredEpisode(failed("judge unreachable"))] * 2))
    assert np.isnan(all_failed["reward"]) and all_failed["reward_strict"] == 0.0 and all_failed["failed"] == 2
    one_left = summarize(episode_stats(trajs, [ScoredEpisode(failed("judge unreachable")), ScoredEpisode(scored(0.0, 0.0))]))
    assert one_left["reward"] == 0.0  # a real zero: one episode was scored


def test_a_rerun_with_other_settings_in_a_used_workdir_is_refused_unless_fresh(tmp_path):
    import pytest

    from gsjax import config as config_lib
    from gsjax.train import pin_config

    first = config_lib.load("configs/grpo.py:test", workdir=str(tmp_path))
    config_lib.save(first, tmp_path / "config.json")
    (tmp_path / "policy_sft").mkdir()
    (tmp_path / "policy_sft" / "agent.json").write_text("{}")  # SFT finished; GRPO did not
    (tmp_path / "world").mkdir()

    def rerun(**overrides):
        return pin_config(config_lib.load("configs/grpo.py:test", workdir=str(tmp_path), **overrides), tmp_path)

    rerun()  # the same settings: a resume
    rerun(eval__prompts=2, mesh__data=1, rl__checkpoint_every=1)  # evaluation and layout may change
    rerun(rl__steps=40)  # extending a phase that has not finished
    with pytest.raises(ValueError, match=r"other settings \(sft\.steps: 8 -> 9\).*--config\.fresh=True"):
        rerun(sft__steps=9)  # SFT finished: a new step count would be silently ignored
    with pytest.raises(ValueError, match=r"rl\.filtering: 'failures_out' -> 'reference', sft\.lr: 0\.003 -> 0\.01"):
        rerun(sft__lr=0.01, rl__filtering="reference")
    recorded = json.loads((tmp_path / "config.json").read_text())
    del recorded["rl"]["filtering"]  # a run started before the setting existed
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    rerun()
    rerun(sft__lr=0.01, fresh=True)  # starts over: the earlier run's outputs go
    assert not (tmp_path / "policy_sft").exists() and not (tmp_path / "world").exists()


def test_changed_keys_walks_nested_settings_and_leaves_out_the_ignored_ones():
    from gsjax.config import changed_keys

    before = {"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": {"f": 1}}
    now = {"a": 1, "b": {"c": 3, "d": [1, 2], "g": 0}, "e": {"f": 2}}
    assert changed_keys(before, now) == {"b.c": (2, 3), "b.g": (None, 0), "e.f": (1, 2)}
    assert changed_keys(before, now, ignore=("e", "b.g")) == {"b.c": (2, 3)}
    assert changed_keys(before, now, ignore=("b.c",)) == {"b.g": (None, 0), "e.f": (1, 2)}
    assert changed_keys(before, now, common_only=True) == {"b.c": (2, 3), "e.f": (1, 2)}  # b.g is new


def test_the_run_summary_prints_wall_time_and_peak_memory():
    from gsjax.train import format_summary, peak_rss_gib

    assert 0.05 < peak_rss_gib() < 24  # this process, jax imported: tens of MiB at least, under the machine's 24
    text = format_summary({"heldout": {}, "heldout_prompts": 0, "minutes": 1.5, "peak_rss_gib": 2.5})
    assert text.splitlines()[-1] == "wall time 1.5 min, peak memory 2.5 GiB (this process's resident set)"
