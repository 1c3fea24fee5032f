"""The benchmarks run end to end at toy sizes and their sanity checks hold."""

from __future__ import annotations

import math

import pytest

from gsjax.bench import common, diffusion, sampler, train_step

TOY_MODEL = [
    "--layers", "1", "--hidden", "32", "--heads", "2", "--kv-heads", "1", "--head-dim", "16", "--mlp", "64",
    "--vocab", "128",
]
ONE_ROUND = ["--repeats", "1", "--warmup", "0"]


def test_interleaved_alternates_contenders_after_warmup():
    calls = []
    timings = common.interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1, pause=0.0
    )
    assert calls == ["a", "b"] * 4
    assert [len(t.seconds) for t in timings.values()] == [3, 3]


def test_paired_ratio_is_the_median_of_per_round_speedups():
    fast = common.Timing("fast", (1.0, 2.0, 1.0))
    slow = common.Timing("slow", (3.0, 2.0, 4.0))
    assert common.paired_ratio(fast, slow) == common.Ratio("fast", "slow", median=3.0, low=1.0, high=4.0)


@pytest.mark.slow
def test_sampler_bench_generates_the_same_ids_as_torch(capsys):
    result = sampler.main(["--batch", "2", "--prompt-len", "8", "--new-tokens", "12", *ONE_ROUND, *TOY_MODEL])
    assert result.outputs_match
    assert math.isfinite(result.ratio.median) and result.ratio.median > 0
    assert "generated ids identical: True" in capsys.readouterr().out


@pytest.mark.slow
def test_train_step_bench_starts_and_ends_at_the_same_loss_as_torch():
    result = train_step.main(["--batch", "2", "--seq", "16", *ONE_ROUND, *TOY_MODEL])
    assert math.isfinite(result.ratio.median) and result.ratio.median > 0
    assert math.isclose(*result.initial_loss, abs_tol=1e-5)
    assert math.isclose(*result.final_loss, abs_tol=1e-4)


@pytest.mark.slow
def test_rollout_bench_overlaps_tool_waits_of_a_replayed_group(capsys):
    from gsjax.bench import rollout

    # 300 ms per call, so the tool waits outweigh the toy model's compute even on a loaded machine
    # (at 100 ms, 1.29 was seen beside the ahead-of-time compiles of test_plan).
    result = rollout.main(["--prompts", "2", "--group", "2", "--latency", "0.3", "--repeats", "1", *TOY_MODEL])
    # 4 trajectories of 3+ tool calls at 300 ms each: the group must overlap them.
    assert result.tool_calls >= 12 and result.critical_s >= 0.9
    assert result.speedup_over_serial > 1.5
    assert "group / critical path" in capsys.readouterr().out


@pytest.mark.slow
def test_reward_overlap_bench_runs_the_steps_rollouts_and_rewards_both_ways(capsys):
    from gsjax.bench import reward_overlap

    result = reward_overlap.main(["--prompts", "2", "--group", "1", "--latency", "0.05", "--generator-latency", "0.1",
                                  "--repeats", "1", *TOY_MODEL])
    assert math.isfinite(result["over_max"]) and result["sequential_over_overlapped"] > 0
    assert "overlapped / max(rollout, rewards)" in capsys.readouterr().out


@pytest.mark.slow
def test_diffusion_bench_gives_the_same_image_as_diffusers():
    result = diffusion.main(["--steps", "2", "--size", "32", "--layers", "1", *ONE_ROUND])
    assert result.outputs_match and result.max_pixel_diff <= 1.5 / 255
    assert math.isfinite(result.ratio.median) and result.ratio.median > 0


def test_vision_policy_table_gives_each_seeds_margin_of_the_vlm_over_text():
    from gsjax.bench.vision_policy import table

    def row(arm, seed, r, k):
        return {"arm": arm, "seed": seed, "reward": {"sft": r[0], "grpo": r[1]},
                "k_score": {"sft": k[0], "grpo": k[1], "none": 0.15}}

    out = table([row("vlm", 0, (0.2, 0.4), (0.3, 0.5)), row("text", 0, (0.1, 0.1), (0.2, 0.2)),
                 row("vlm", 1, (0.3, 0.3), (0.3, 0.3))])  # seed 1 has no text run: no margin row
    lines = out.splitlines()
    assert "| vlm - text | 0 | +0.100 | +0.300 | +0.100 | +0.300 |" in lines
    assert not any(x.startswith("| vlm - text | 1") for x in lines)
    assert lines[-1] == "no-search baseline K-Score: 0.150"
