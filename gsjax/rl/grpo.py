"""GRPO math as pure functions: group advantages and the clipped policy loss.

Semantics follow the reference (verl/rllm, reference-spec section 10) with one deliberate change:
failed episodes (a judge or generator failure, an environment error) are removed from their group
before the group's mean and std are taken, instead of being masked afterwards, so a failure never
moves the other samples' advantages.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

LossAgg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]


def group_advantages(
    rewards: np.ndarray,
    group_ids: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> np.ndarray:
    """Per-sample advantage (r - mean_g) / (std_g + eps) within each group g.

    - `valid` False marks failed episodes: they leave the group statistics and get advantage 0.
    - std is the unbiased (n-1) one; a group whose valid rewards are all equal gets 0; a group with
      one valid sample is treated as mean 0, std 1 (the reference's rule), so its advantage is r.
    - `normalize_std=False` is Dr.GRPO: only the mean is subtracted.
    """
    rewards = np.asarray(rewards, np.float64)
    group_ids = np.asarray(group_ids)
    valid = np.ones_like(rewards, bool) if valid is None else np.asarray(valid, bool)
    if not (rewards.shape == group_ids.shape == valid.shape) or rewards.ndim != 1:
        raise ValueError(f"rewards {rewards.shape}, group_ids {group_ids.shape}, valid {valid.shape}: expected equal 1-D shapes")
    adv = np.zeros_like(rewards)
    for g in np.unique(group_ids):
        idx = np.flatnonzero((group_ids == g) & valid)
        if idx.size == 0:
            continue
        r = rewards[idx]
        if idx.size == 1:
            mean, std = 0.0, 1.0
        else:
            mean, std = r.mean(), r.std(ddof=1)
        if idx.size > 1 and np.all(r == r[0]):
            adv[idx] = 0.0
        elif normalize_std:
            adv[idx] = (r - mean) / (std + eps)
        else:
            adv[idx] = r - mean
    return adv.astype(np.float32)


def degenerate_groups(rewards: np.ndarray, group_ids: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-sample flag: True where the sample's group has all valid rewards equal (no signal)."""
    rewards = np.asarray(rewards)
    group_ids = np.asarray(group_ids)
    valid = np.ones_like(rewards, bool) if valid is None else np.asarray(valid, bool)
    flags = np.zeros(rewards.shape, bool)
    for g in np.unique(group_ids):
        members = group_ids == g
        r = rewards[members & valid]
        flags[members] = r.size == 0 or bool(np.all(r == r[0]))
    return flags


@dataclasses.dataclass(frozen=True)
class LossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = 3.0  # bounds the loss of negative-advantage tokens at -A * dual_clip
    kl_coef: float = 0.0  # KL to a frozen reference policy (off in the reference)
    agg: LossAgg = "seq-mean-token-sum"
    # Truncated importance weight for sampler/trainer mismatch (None = off): each token's loss is
    # multiplied by min(exp(trainer_old - sampler), cap), stop-gradient.
    mismatch_cap: float | None = None


def aggregate(per_token: jax.Array, mask: jax.Array, mode: LossAgg) -> jax.Array:
    """Reduce a [B, T] per-token loss over masked tokens as the reference's loss_agg_mode does."""
    mask = mask.astype(per_token.dtype)
    masked = per_token * mask
    if mode == "token-mean":
        return masked.sum() / jnp.maximum(mask.sum(), 1.0)
    tokens_per_seq = mask.sum(axis=-1)
    has_tokens = (tokens_per_seq > 0).astype(per_token.dtype)
    if mode == "seq-mean-token-sum":
        per_seq = masked.sum(axis=-1)
    elif mode == "seq-mean-token-mean":
        per_seq = masked.sum(axis=-1) / jnp.maximum(tokens_per_seq, 1.0)
    else:
        raise ValueError(f"unknown loss aggregation {mode!r}; expected token-mean, seq-mean-token-sum or seq-mean-token-mean")
    return (per_seq * has_tokens).sum() / jnp.maximum(has_tokens.sum(), 1.0)


def policy_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    cfg: LossConfig,
    *,
    ref_logprobs: jax.Array | None = None,
    sampler_logprobs: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped GRPO loss. logprobs/old_logprobs/mask: [B, T]; advantages: [B] (one per sequence).

    Returns (loss, metrics). Metrics (clip fractions, approximate KL, mismatch) are token means.
    """
    adv = advantages[:, None].astype(jnp.float32)
    log_ratio = logprobs - old_logprobs
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    per_token = jnp.maximum(unclipped, clipped)
    clip_frac = (clipped > unclipped).astype(jnp.float32)
    if cfg.dual_clip is not None:
        bound = -adv * cfg.dual_clip
        dual = (adv < 0) & (per_token > bound)
        per_token = jnp.where(adv < 0, jnp.minimum(per_token, bound), per_token)
        dual_frac = dual.astype(jnp.float32)
    else:
        dual_frac = jnp.zeros_like(per_token)

    metrics: dict[str, jax.Array] = {}
    if sampler_logprobs is not None:
        diff = old_logprobs - sampler_logprobs
        metrics["mismatch_abs"] = aggregate(jnp.abs(diff), mask, "token-mean")
        if cfg.mismatch_cap is not None:
            per_token = per_token * jax.lax.stop_gradient(jnp.minimum(jnp.exp(diff), cfg.mismatch_cap))
    if cfg.kl_coef and ref_logprobs is not None:
        # k3 estimator of KL(pi || ref): exp(ref - pi) - (ref - pi) - 1, always >= 0.
        d = ref_logprobs - logprobs
        kl = jnp.exp(d) - d - 1.0
        per_token = per_token + cfg.kl_coef * kl
        metrics["kl_ref"] = aggregate(kl, mask, "token-mean")

    loss = aggregate(per_token, mask, cfg.agg)
    metrics.update(
        clip_frac=aggregate(clip_frac, mask, "token-mean"),
        dual_clip_frac=aggregate(dual_frac, mask, "token-mean"),
        approx_kl_old=aggregate(0.5 * log_ratio**2, mask, "token-mean"),
    )
    return loss, metrics
