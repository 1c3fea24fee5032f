"""The GRPO learner end to end on a toy bandit: rewarded completions become more likely."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gsjax.models.interface import ModelInput
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.rl.grpo import LossConfig
from gsjax.rl.trainer import GRPOConfig, GRPOTrainer, Sample, make_rows, step_statistics
from gsjax.sampling import Sampler, SamplingParams

PROMPTS = [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
TARGET = 17  # the completion the reward pays for


@nnx.jit
def _last_logits(model, tokens):
    return model(ModelInput(tokens))[0, -1]


def _p_target(model):
    # jitted: called eagerly, the model compiled each of its few hundred operations apart (26 s of this test)
    probs = [float(jax.nn.softmax(_last_logits(model, jnp.asarray([p])))[TARGET]) for p in PROMPTS]
    return float(np.mean(probs))


def test_grpo_raises_probability_of_the_rewarded_completion():
    model = Qwen3(tiny_config(vocab_size=32), rngs=nnx.Rngs(0))
    cfg = GRPOConfig(lr=3e-3, temperature=1.0, row_len=16, loss=LossConfig(agg="seq-mean-token-sum"))
    trainer = GRPOTrainer(model, cfg)
    sampler = Sampler(model, num_slots=24, cache_len=16, params=SamplingParams(temperature=1.0), seed=0)
    before = _p_target(model)
    for step in range(30):
        sampler.update_weights(trainer.model)
        prompts = [p for p in PROMPTS for _ in range(8)]
        turns = sampler.generate(prompts, max_new_tokens=2)
        samples = [Sample(p + t.tokens, [0] * len(p) + [1] * len(t.tokens), [0.0] * len(p) + t.logprobs,
                          [0] * len(p) + [1] * len(t.tokens), group=i // 8, reward=float(t.tokens[0] == TARGET))
                   for i, (p, t) in enumerate(zip(prompts, turns))]
        metrics = trainer.step(samples)
        assert metrics["mismatch_abs"] < 1e-4  # the sampler's and learner's log-probabilities agree
    after = _p_target(trainer.model)
    assert before < 0.1 and after > 0.5, (before, after)
    assert trainer.compiles == 1


def test_failed_samples_are_out_of_the_loss_and_the_statistics():
    cfg = GRPOConfig(row_len=8)
    base = dict(tokens=[1, 2, 3], loss_mask=[0, 1, 1], sampler_logprobs=[0, -1, -1], sampled=[0, 1, 1], group=0)
    samples = [Sample(**base, reward=1.0), Sample(**base, reward=0.0), Sample(**base, reward=0.0, failed=True)]
    stats = step_statistics(samples, cfg)
    np.testing.assert_allclose(stats.advantages, [0.7071, -0.7071, 0.0], atol=1e-3)
    rows = make_rows(samples, stats, cfg)
    # Packed two to a row of 8: [a a a b b b . .] [c c c . . . . .]; the failed one trains nothing.
    assert rows["tokens"].shape == (2, 8)
    assert rows["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
    assert rows["loss_mask"][1].sum() == 0 and rows["loss_weights"][1].sum() == 0
    # seq-mean-token-sum over the two valid sequences: each loss token weighs 1/2.
    assert rows["loss_weights"][0].tolist() == [0, 0.5, 0.5, 0, 0.5, 0.5, 0, 0]
    assert rows["advantages"][0, :3].tolist() == pytest.approx([0.7071] * 3, abs=1e-3)


def _base(**kw):
    return dict(tokens=[1, 2, 3], loss_mask=[0, 1, 1], sampler_logprobs=[0, -1, -1], sampled=[0, 1, 1], **kw)


def test_masked_samples_count_in_the_statistics_and_leave_the_update():
    cfg = GRPOConfig(row_len=8)
    rewards = [1.0, 0.0, 0.5, 0.0]
    plain = step_statistics([Sample(**_base(group=0), reward=r) for r in rewards], cfg)
    masked = [Sample(**_base(group=0), reward=r, masked=r <= 0) for r in rewards]
    stats = step_statistics(masked, cfg)
    # The kept samples' advantages are those of the whole group (the masked ones were in its mean and std) ...
    np.testing.assert_allclose(stats.advantages[[0, 2]], plain.advantages[[0, 2]])
    assert stats.in_update.tolist() == [True, False, True, False] and stats.update_samples == 2
    # ... and the masked ones train nothing and leave the normaliser: each kept token weighs 1/2, not 1/4.
    rows = make_rows(masked, stats, cfg)
    assert rows["loss_weights"].sum() == pytest.approx(2.0)
    assert rows["loss_weights"][rows["loss_mask"] > 0].tolist() == [0.5] * 4


def test_a_lone_valid_sample_and_with_drop_degenerate_groups_a_flat_group_leave_the_update():
    samples = [Sample(**_base(group="a"), reward=0.9), Sample(**_base(group="a"), reward=0.0, failed=True),
               Sample(**_base(group="b"), reward=0.3), Sample(**_base(group="b"), reward=0.3),
               Sample(**_base(group="c"), reward=1.0), Sample(**_base(group="c"), reward=0.0)]
    kept = step_statistics(samples, GRPOConfig(row_len=8))
    assert kept.advantages[0] == 0.0 and kept.in_update.tolist() == [False, False, True, True, True, True]
    dropped = step_statistics(samples, GRPOConfig(row_len=8, drop_degenerate_groups=True))
    assert dropped.in_update.tolist() == [False, False, False, False, True, True]
    # Group b's samples had advantage 0 either way; dropping them changes the others' weight (1/4 -> 1/2).
    assert kept.loss_weights[4] == pytest.approx(0.25) and dropped.loss_weights[4] == pytest.approx(0.5)


def test_a_step_with_nothing_to_train_leaves_the_weights_and_the_optimizer_alone():
    model = Qwen3(tiny_config(vocab_size=32), rngs=nnx.Rngs(0))
    trainer = GRPOTrainer(model, GRPOConfig(lr=1e-2, weight_decay=0.1, temperature=1.0, row_len=8))
    before = jax.tree.map(np.asarray, nnx.state(trainer.model, nnx.Param))
    opt_before = jax.tree.map(np.asarray, trainer.opt_state)
    flat = [Sample(**_base(group=0), reward=0.0, masked=True), Sample(**_base(group=0), reward=0.0, masked=True)]
    metrics = trainer.step(flat)
    assert metrics["update_skipped"] == 1.0 and metrics["update_samples"] == 0.0
    norm = np.sqrt(sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(before)))
    assert metrics["param_norm"] == pytest.approx(norm, rel=1e-5)  # the weights' checksum, unchanged
    after = jax.tree.map(np.asarray, nnx.state(trainer.model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    jax.tree.map(np.testing.assert_array_equal, opt_before, jax.tree.map(np.asarray, trainer.opt_state))
    # A step with something to train moves them (weight decay alone would, even at advantage 0).
    metrics = trainer.step([Sample(**_base(group=0), reward=1.0), Sample(**_base(group=0), reward=0.0)])
    assert metrics["update_skipped"] == 0.0 and metrics["update_samples"] == 2.0
    moved = jax.tree.map(np.asarray, nnx.state(trainer.model, nnx.Param))
    moved_norm = np.sqrt(sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(moved)))
    assert metrics["param_norm"] == pytest.approx(moved_norm, rel=1e-5) and metrics["param_norm"] != norm
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(moved)))


def test_kl_to_the_frozen_starting_policy_is_zero_first_then_grows():
    model = Qwen3(tiny_config(vocab_size=32), rngs=nnx.Rngs(0))
    trainer = GRPOTrainer(model, GRPOConfig(lr=1e-2, temperature=1.0, row_len=8,
                                            loss=LossConfig(kl_coef=0.1)))
    rs = np.random.RandomState(0)
    samples = [Sample(rs.randint(0, 32, 6).tolist(), [0, 0, 1, 1, 1, 1], [0.0] * 6, [0] * 6, group=i // 4,
                      reward=float(i % 2)) for i in range(8)]
    first = trainer.step(samples)
    for _ in range(5):
        last = trainer.step(samples)
    assert abs(first["kl_ref"]) < 1e-6  # the learner starts at the reference
    assert last["kl_ref"] > 1e-4  # and moves away from it; the KL term measures that


def test_the_loop_hands_failures_to_the_learner_as_the_filtering_says():
    from gsjax.agent.rollout import Task, Trajectory
    from gsjax.agent.types import Termination
    from gsjax.rewards.compute import ScoredEpisode
    from gsjax.rewards.score import failed, scored, zero
    from gsjax.rewards.types import ZeroRule
    from gsjax.rl.grpo import parse_filtering
    from gsjax.rl.loop import learner_samples

    def traj(term):
        return Trajectory(Task("p", "q"), [1, 2, 3], [0, 1, 1], [0, 1, 1], [0.0, -1.0, -1.0], [], [], [], term, None, 1, 0)

    trajs = [traj(Termination.ANSWER), traj(Termination.ANSWER), traj(Termination.REPEATED), traj(Termination.ANSWER)]
    results = [ScoredEpisode(scored(0.8, 0.5)), ScoredEpisode(scored(0.0, 0.0)),
               ScoredEpisode(zero(ZeroRule.OVERLONG_OR_REPEATED)), ScoredEpisode(failed("judge unreachable"))]
    ours = learner_samples(trajs, results, parse_filtering("failures_out"))
    assert [(s.failed, s.masked) for s in ours] == [(False, False)] * 3 + [(True, False)]
    ref = learner_samples(trajs, results, parse_filtering("reference"))
    # The reference: the failure is a reward of 0 in the statistics; everything at or below 0 leaves the update.
    assert [(s.failed, s.masked, s.reward) for s in ref][1:] == [(False, True, 0.0)] * 3
    assert (ref[0].failed, ref[0].masked, ref[0].reward) == (False, False, ours[0].reward) and ours[0].reward > 0


def test_a_non_finite_step_is_skipped_by_the_learner_and_counts_towards_stopping_the_run():
    from gsjax.rl.trainer import SKIP_NONFINITE, SKIP_NOTHING
    from gsjax.train import is_broken_step

    model = Qwen3(tiny_config(vocab_size=32), rngs=nnx.Rngs(0))
    trainer = GRPOTrainer(model, GRPOConfig(lr=1e-2, temperature=1.0, row_len=8))
    before = jax.tree.map(np.asarray, nnx.state(trainer.model, nnx.Param))
    poisoned = [Sample(**_base(group=0), reward=float("nan")), Sample(**_base(group=0), reward=1.0)]
    metrics = trainer.step(poisoned)  # a NaN reward makes the group's advantages, and so the loss, NaN
    assert metrics["update_skipped"] == 1.0 and metrics["skip_reason"] == SKIP_NONFINITE
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.state(trainer.model, nnx.Param)))
    # SFT's way (the default): the same guard in the jitted step, then an error naming the numbers.
    stats = step_statistics(poisoned, trainer.cfg)
    with pytest.raises(FloatingPointError, match="not both finite.*the update was not applied"):
        trainer.update(make_rows(poisoned, stats, trainer.cfg))
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.state(trainer.model, nnx.Param)))

    assert is_broken_step({"reward": float("nan")})  # every episode's reward failed
    assert is_broken_step({"reward": 0.2, "skip_reason": SKIP_NONFINITE})
    assert not is_broken_step({"reward": 0.0, "skip_reason": SKIP_NOTHING})  # nothing earned: a real outcome
    assert not is_broken_step({"reward": 0.0})


def test_sampler_and_learner_agree_under_top_p_and_top_k_and_the_mismatch_averages_drawn_tokens_only():
    model = Qwen3(tiny_config(vocab_size=32), rngs=nnx.Rngs(0))
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=5)
    cfg = GRPOConfig(lr=1e-3, temperature=1.0, row_len=16)
    trainer = GRPOTrainer(model, cfg)
    sampler = Sampler(model, num_slots=8, cache_len=16, params=params, seed=0)
    prompts = [p for p in PROMPTS for _ in range(2)]
    turns = sampler.generate(prompts, max_new_tokens=6)
    lp = np.concatenate([t.logprobs for t in turns])
    behavior = np.concatenate([t.behavior_logprobs for t in turns])
    assert np.all(behavior >= lp - 1e-6) and np.any(behavior > lp + 1e-3)  # truncation renormalises upwards
    # Each turn ends with one template token the sampler did not draw (loss 1, sampled 0), whose recorded
    # log-probability is junk: it must not enter the mismatch.
    samples = [Sample(p + t.tokens + [0], [0] * len(p) + [1] * (len(t.tokens) + 1),
                      [0.0] * len(p) + t.logprobs + [-50.0], [0] * len(p) + [1] * len(t.tokens) + [0],
                      group=i // 2, reward=float(i % 2), behavior_logprobs=[0.0] * len(p) + t.behavior_logprobs + [0.0])
               for i, (p, t) in enumerate(zip(prompts, turns))]
    metrics = trainer.step(samples)
    assert metrics["mismatch_abs"] < 1e-4  # the untruncated log-probabilities agree, drawn tokens only
    # Shift every drawn token's sampler log-probability by 0.5: the mean over drawn tokens is 0.5, not diluted.
    shifted = [dataclasses.replace(s, sampler_logprobs=[x - 0.5 * d for x, d in zip(s.sampler_logprobs, s.sampled)])
               for s in samples]
    fresh = GRPOTrainer(Qwen3(tiny_config(vocab_size=32), rngs=nnx.Rngs(0)), cfg)
    assert fresh.step(shifted)["mismatch_abs"] == pytest.approx(0.5, abs=1e-4)
