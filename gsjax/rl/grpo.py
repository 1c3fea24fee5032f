"""GRPO math as pure functions: group advantages and the clipped policy loss.

Semantics follow the reference (verl/rllm, reference-spec section 10), with the episode filtering
chosen by `rl.filtering` (`parse_filtering`):
- gsjax's rule, `failures_out` (the default): failed episodes (a judge or generator failure) leave
  their group before the group's mean and std are taken, so a failure never moves the other
  samples' advantages; every other episode trains, with its advantage.
- the reference's, `reference`: a failure counts as reward 0 (the reference's reward function gives
  0 when the judge fails), every episode enters the group statistics, and then rllm's compact
  filtering takes episodes out of the update by termination reason, and every episode with reward
  <= 0 (`all_failed_episodes`, which rllm groups by an id unique per rollout).
In both, a group with fewer than two valid samples has no baseline to compare with: its samples get
advantage 0 and leave the update (the reference's rule for a lone sample, mean 0 and std 1, would
train on its raw reward).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

LossAgg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]

# `rl.filtering`'s names: gsjax's rule, then rllm's compact-filtering masks as the reference's run
# script sets them (each `mask_<name>`; reference-spec section 5).
FILTERS = ("failures_out", "unknown", "error", "max_response_length_exceeded", "repeated_response",
           "all_failed_episodes")
REFERENCE_FILTERING = FILTERS[1:]
# gsjax's terminations as the reference's termination reasons (reference-spec section 1: a parse
# failure, no answer and the agent's own error are rllm's UNKNOWN); an infrastructure failure of the
# reward is rllm's ERROR.
REFERENCE_REASON = {"answer": "env_done", "max_tokens": "max_response_length_exceeded",
                    "repeated": "repeated_response", "max_rounds": "unknown", "parse_failed": "unknown",
                    "no_answer": "unknown", "error": "unknown"}


def parse_filtering(spec: str) -> frozenset[str]:
    """`rl.filtering` as a set of FILTERS: a comma-separated list of their names, where `reference`
    stands for the reference's five masks and `none` for nothing (failures count as reward 0 and
    every episode trains)."""
    out: set[str] = set()
    for name in (n.strip() for n in spec.split(",")):
        if name == "reference":
            out.update(REFERENCE_FILTERING)
        elif name in FILTERS:
            out.add(name)
        elif name not in ("none", ""):
            raise ValueError(f"rl.filtering: unknown filter {name!r} in {spec!r}; expected 'reference', 'none' or a "
                             f"comma-separated list of {', '.join(FILTERS)}")
    return frozenset(out)


def filtered_after_advantages(terminations, failed, rewards, filters: frozenset[str]) -> np.ndarray:
    """Per episode: True where one of `filters` takes it out of the update after the group
    statistics were taken (it still counted in its group's mean and std, as in rllm).
    `terminations` are gsjax's termination names, `failed` marks infrastructure failures."""
    out = []
    for term, fail, reward in zip(terminations, failed, rewards, strict=True):
        if term not in REFERENCE_REASON:
            raise ValueError(f"unknown termination {term!r}; expected one of {sorted(REFERENCE_REASON)}")
        reason = "error" if fail else REFERENCE_REASON[term]
        out.append(reason in filters or ("all_failed_episodes" in filters and reward <= 0))
    return np.asarray(out, bool).reshape(len(out))


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
    - std is the unbiased (n-1) one; a group whose valid rewards are all equal gets 0, and so does a
      group with one valid sample (nothing to compare it with; `lone_samples` flags it so that it
      leaves the update: the reference's mean 0, std 1 would make its advantage its raw reward r).
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
        if idx.size < 2:
            continue
        r = rewards[idx]
        mean, std = r.mean(), r.std(ddof=1)
        if np.all(r == r[0]):
            adv[idx] = 0.0
        elif normalize_std:
            adv[idx] = (r - mean) / (std + eps)
        else:
            adv[idx] = r - mean
    return adv.astype(np.float32)


def lone_samples(group_ids: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-sample flag: True where the sample's group has fewer than two valid samples."""
    group_ids = np.asarray(group_ids)
    valid = np.ones(group_ids.shape, bool) if valid is None else np.asarray(valid, bool)
    flags = np.zeros(group_ids.shape, bool)
    for g in np.unique(group_ids):
        members = group_ids == g
        flags[members] = np.count_nonzero(members & valid) < 2
    return flags


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
    # multiplied by min(exp(trainer_old - behavior), cap), stop-gradient, where behavior is the
    # log-probability under the distribution the sampler drew from (after top-k / top-p).
    mismatch_cap: float | None = None


def sequence_weights(n_tokens, mode: LossAgg, horizon: int | None = None):
    """Weight of each masked token of each sequence (n_tokens [N]: its masked tokens) so that
    sum(weight * per-token loss) over all tokens is the batch loss the reference's loss_agg_mode
    gives. Weights of a batch add up over any split of it (micro-batches, processes), which is
    how a micro-batched step gets exactly the unbatched loss. NumPy or jax arrays.
    `seq-mean-token-sum-norm` (Dr.GRPO's) sums every masked token's loss and divides by a constant
    `horizon`: verl divides by its padded response length, a constant of the config."""
    xp = np if isinstance(n_tokens, np.ndarray) else jnp
    n = n_tokens.astype(xp.float32)
    has = (n > 0).astype(xp.float32)
    seqs = xp.maximum(has.sum(), 1.0)
    if mode == "token-mean":
        return has / xp.maximum(n.sum(), 1.0)
    if mode == "seq-mean-token-sum":
        return has / seqs
    if mode == "seq-mean-token-mean":
        return has / xp.maximum(n, 1.0) / seqs
    if mode == "seq-mean-token-sum-norm":
        if not horizon or horizon < 1:
            raise ValueError(f"seq-mean-token-sum-norm needs a positive horizon (the padded length), got {horizon}")
        return has / float(horizon)
    raise ValueError(f"unknown loss aggregation {mode!r}; expected token-mean, seq-mean-token-sum, "
                     "seq-mean-token-mean or seq-mean-token-sum-norm")


def token_weights(mask, mode: LossAgg):
    """Per-token weights [B, T] of a batch whose rows are sequences (mask [B, T]); the horizon of
    `seq-mean-token-sum-norm` is T, as in verl."""
    mask = mask.astype(np.float32 if isinstance(mask, np.ndarray) else jnp.float32)
    return mask * sequence_weights(mask.sum(axis=-1), mode, horizon=mask.shape[-1])[:, None]


def aggregate(per_token: jax.Array, mask: jax.Array, mode: LossAgg) -> jax.Array:
    """Reduce a [B, T] per-token loss over masked tokens as the reference's loss_agg_mode does."""
    return (per_token * token_weights(mask, mode).astype(per_token.dtype)).sum()


def per_token_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    cfg: LossConfig,
    *,
    ref_logprobs: jax.Array | None = None,
    sampler_logprobs: jax.Array | None = None,
    behavior_logprobs: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped GRPO loss of each token (advantages per token, any shape) and per-token metric
    values (clip indicators, approximate KL, mismatch), to be reduced with token weights.
    `sampler_logprobs` are the sampler's under the same untruncated distribution the learner
    computes (their difference is the engines' mismatch); `behavior_logprobs` those under the
    distribution it drew from, for the importance weight (default: `sampler_logprobs`)."""
    adv = advantages.astype(jnp.float32)
    log_ratio = logprobs - old_logprobs
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    per_token = jnp.maximum(unclipped, clipped)
    values = {"clip_frac": (clipped > unclipped).astype(jnp.float32)}
    if cfg.dual_clip is not None:
        bound = -adv * cfg.dual_clip
        values["dual_clip_frac"] = ((adv < 0) & (per_token > bound)).astype(jnp.float32)
        per_token = jnp.where(adv < 0, jnp.minimum(per_token, bound), per_token)
    else:
        values["dual_clip_frac"] = jnp.zeros_like(per_token)
    values["approx_kl_old"] = 0.5 * log_ratio**2
    values["ppo_kl"] = -jnp.clip(log_ratio, -20.0, 20.0)  # verl's ppo_kl: old - new log-probability, clamped
    if sampler_logprobs is not None:
        values["mismatch_abs"] = jnp.abs(old_logprobs - sampler_logprobs)
        if cfg.mismatch_cap is not None:
            behavior = sampler_logprobs if behavior_logprobs is None else behavior_logprobs
            weight = jnp.minimum(jnp.exp(old_logprobs - behavior), cfg.mismatch_cap)
            per_token = per_token * jax.lax.stop_gradient(weight)
    if cfg.kl_coef and ref_logprobs is not None:
        # k3 estimator of KL(pi || ref): exp(ref - pi) - (ref - pi) - 1, always >= 0.
        d = ref_logprobs - logprobs
        kl = jnp.exp(d) - d - 1.0
        per_token = per_token + cfg.kl_coef * kl
        values["kl_ref"] = kl
    return per_token, values


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
    per_token, values = per_token_loss(logprobs, old_logprobs, jnp.broadcast_to(advantages[:, None], logprobs.shape),
                                       cfg, ref_logprobs=ref_logprobs, sampler_logprobs=sampler_logprobs)
    mean = token_weights(mask, "token-mean")
    return aggregate(per_token, mask, cfg.agg), {k: (v * mean).sum() for k, v in values.items()}
