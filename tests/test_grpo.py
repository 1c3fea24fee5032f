"""GRPO advantages and losses against straightforward NumPy references."""

import jax.numpy as jnp
import numpy as np
import pytest

from gsjax.rl.grpo import (REFERENCE_FILTERING, LossConfig, aggregate, degenerate_groups, filtered_after_advantages,
                           group_advantages, lone_samples, parse_filtering, policy_loss)


def test_advantages_hand_computed():
    rewards = np.array([1.0, 0.0, 0.5, 0.5, 0.2])
    groups = np.array([0, 0, 1, 1, 2])
    adv = group_advantages(rewards, groups)
    std = np.std([1.0, 0.0], ddof=1)  # 0.7071
    np.testing.assert_allclose(adv[:2], [0.5 / (std + 1e-6), -0.5 / (std + 1e-6)], rtol=1e-6)
    np.testing.assert_array_equal(adv[2:4], [0.0, 0.0])  # all equal -> 0
    assert adv[4] == 0.0  # a group of one has no baseline (the reference's mean 0, std 1 would give 0.2)
    assert lone_samples(groups).tolist() == [False, False, False, False, True]
    assert lone_samples(groups[:2], np.array([True, False])).tolist() == [True, True]  # one valid of two


def test_filtering_names_parse_and_a_misspelt_one_is_named():
    assert parse_filtering("failures_out") == {"failures_out"}
    assert parse_filtering("reference") == set(REFERENCE_FILTERING) and "failures_out" not in REFERENCE_FILTERING
    assert parse_filtering("none") == frozenset() == parse_filtering("")
    assert parse_filtering("failures_out, repeated_response") == {"failures_out", "repeated_response"}
    with pytest.raises(ValueError, match=r"unknown filter 'repeated' in 'failures_out,repeated'.*repeated_response"):
        parse_filtering("failures_out,repeated")


def test_reference_filtering_masks_by_termination_and_every_reward_at_or_below_zero():
    terms = ["answer", "answer", "max_tokens", "repeated", "parse_failed", "no_answer", "max_rounds", "error", "answer"]
    failed = [False] * 8 + [True]
    rewards = [0.4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    masked = filtered_after_advantages(terms, failed, rewards, parse_filtering("reference"))
    assert masked.tolist() == [False] + [True] * 8
    # One mask at a time: each catches its own reason (a failure of the reward is rllm's ERROR).
    only = {name: filtered_after_advantages(terms, failed, [1.0] * 9, frozenset({name})).tolist()
            for name in REFERENCE_FILTERING}
    assert only["max_response_length_exceeded"] == [False, False, True] + [False] * 6
    assert only["repeated_response"] == [False, False, False, True] + [False] * 5
    assert only["unknown"] == [False] * 4 + [True] * 4 + [False]
    assert only["error"] == [False] * 8 + [True]
    assert only["all_failed_episodes"] == [False] * 9  # every reward is positive here
    assert not filtered_after_advantages(terms, failed, rewards, parse_filtering("failures_out")).any()
    with pytest.raises(ValueError, match="unknown termination 'timeout'"):
        filtered_after_advantages(["timeout"], [False], [0.0], frozenset())


def test_failed_episodes_leave_group_statistics():
    rewards = np.array([1.0, 0.0, 0.5, 0.0])
    groups = np.zeros(4, int)
    valid = np.array([True, True, True, False])
    adv = group_advantages(rewards, groups, valid)
    ref = group_advantages(rewards[:3], groups[:3])
    np.testing.assert_allclose(adv[:3], ref)
    assert adv[3] == 0.0
    # A failure's reward value, whatever it is, does not move the others.
    rewards[3] = 123.0
    np.testing.assert_allclose(group_advantages(rewards, groups, valid), adv)


def test_dr_grpo_subtracts_mean_only():
    adv = group_advantages(np.array([1.0, 0.0, 0.5]), np.zeros(3, int), normalize_std=False)
    np.testing.assert_allclose(adv, [0.5, -0.5, 0.0], atol=1e-7)


def test_degenerate_groups_flagged():
    flags = degenerate_groups(np.array([1, 1, 0, 1.0]), np.array([0, 0, 1, 1]))
    assert flags.tolist() == [True, True, False, False]


def _numpy_loss(logp, old, adv, mask, cfg: LossConfig):
    ratio = np.exp(logp - old)
    a = adv[:, None]
    l1 = -a * ratio
    l2 = -a * np.clip(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high)
    per = np.maximum(l1, l2)
    if cfg.dual_clip is not None:
        per = np.where(a < 0, np.minimum(per, -a * cfg.dual_clip), per)
    B, T = logp.shape
    if cfg.agg == "token-mean":
        return (per * mask).sum() / mask.sum()
    if cfg.agg == "seq-mean-token-sum-norm":  # verl: every masked token summed, over the padded length
        return (per * mask).sum() / T
    seqs = []
    for b in range(B):
        n = mask[b].sum()
        if n == 0:
            continue
        s = (per[b] * mask[b]).sum()
        seqs.append(s if cfg.agg == "seq-mean-token-sum" else s / n)
    return np.mean(seqs)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("dual", [None, 3.0])
def test_policy_loss_matches_numpy(agg, dual):
    rs = np.random.RandomState(0)
    B, T = 6, 11
    old = rs.randn(B, T) * 0.5 - 2
    logp = old + rs.randn(B, T) * 0.6  # ratios well outside the clip range too
    adv = rs.randn(B)
    mask = (rs.rand(B, T) > 0.3).astype(np.float32)
    mask[2] = 0  # a sequence with no valid token
    cfg = LossConfig(agg=agg, dual_clip=dual)
    loss, metrics = policy_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), cfg)
    np.testing.assert_allclose(float(loss), _numpy_loss(logp, old, adv, mask, cfg), rtol=1e-5)
    assert 0 < float(metrics["clip_frac"]) < 1


def test_ppo_kl_is_the_mean_old_minus_new_log_probability_clamped_at_20():
    old = np.array([[-1.0, -2.0, -3.0, -1.0]])
    new = np.array([[-1.5, -1.0, -30.0, -1.0]])
    mask = np.array([[1.0, 1.0, 1.0, 0.0]])
    _, metrics = policy_loss(jnp.asarray(new), jnp.asarray(old), jnp.asarray([1.0]), jnp.asarray(mask), LossConfig())
    # old - new per token: 0.5, -1.0, 27 -> clamped to 20; the masked token does not count.
    assert float(metrics["ppo_kl"]) == pytest.approx((0.5 - 1.0 + 20.0) / 3, rel=1e-6)


def test_seq_mean_token_sum_norm_weights_add_up_over_splits_and_need_a_horizon():
    from gsjax.rl.grpo import sequence_weights

    n = np.array([3.0, 0.0, 5.0])
    np.testing.assert_allclose(sequence_weights(n, "seq-mean-token-sum-norm", horizon=16), [1 / 16, 0.0, 1 / 16])
    np.testing.assert_allclose(sequence_weights(n[:1], "seq-mean-token-sum-norm", horizon=16), [1 / 16])
    with pytest.raises(ValueError, match="needs a positive horizon"):
        sequence_weights(n, "seq-mean-token-sum-norm")


def test_masked_tokens_contribute_nothing():
    rs = np.random.RandomState(1)
    logp, old = rs.randn(3, 8), rs.randn(3, 8)
    mask = np.ones((3, 8), np.float32)
    mask[:, 5:] = 0
    args = lambda lp: (jnp.asarray(lp), jnp.asarray(old), jnp.asarray([1.0, -0.5, 2.0]), jnp.asarray(mask))  # noqa: E731
    base, _ = policy_loss(*args(logp), LossConfig())
    logp2 = logp.copy()
    logp2[:, 5:] += 50.0  # wild values where the mask is 0
    moved, _ = policy_loss(*args(logp2), LossConfig())
    assert float(base) == float(moved)


def test_dual_clip_bounds_negative_advantage_loss():
    logp = jnp.asarray([[5.0]])  # ratio e^5 ~ 148
    loss, metrics = policy_loss(logp, jnp.zeros((1, 1)), jnp.asarray([-1.0]), jnp.ones((1, 1)), LossConfig(dual_clip=3.0))
    assert float(loss) == pytest.approx(3.0)
    assert float(metrics["dual_clip_frac"]) == 1.0


def test_mismatch_metric_and_importance_cap():
    logp = jnp.zeros((1, 4))
    old = jnp.zeros((1, 4))
    sampler = jnp.full((1, 4), -1.0)  # trainer's old logprob is e^1 times the sampler's
    cfg = LossConfig(mismatch_cap=2.0, agg="token-mean")
    loss, metrics = policy_loss(logp, old, jnp.asarray([1.0]), jnp.ones((1, 4)), cfg, sampler_logprobs=sampler)
    assert float(metrics["mismatch_abs"]) == pytest.approx(1.0)
    assert float(loss) == pytest.approx(-2.0)  # -A * ratio(1) * min(e, 2)


def test_aggregate_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown loss aggregation 'sum'"):
        aggregate(jnp.ones((1, 1)), jnp.ones((1, 1)), "sum")
