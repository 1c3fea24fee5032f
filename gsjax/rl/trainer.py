"""The GRPO learner: trajectories + rewards -> packed arrays -> one jitted clipped-policy update.

The learner sees only arrays ([batch, length] tokens, loss mask, sampler log-probabilities, and
one advantage per sequence); shapes are bucketed by length so steps do not recompile. As in the
reference's setting (one PPO epoch, the whole step's batch as one mini-batch), the old policy is
the current one: `old = stop_gradient(logp)` gives ratio 1 in value and the policy gradient in
derivative, without a second forward pass. The sampler/trainer log-probability mismatch is
measured on every step (and can be corrected with a truncated importance weight).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gsjax.models.losses import token_logprobs
from gsjax.models.qwen3 import Qwen3
from gsjax.rl.grpo import LossConfig, degenerate_groups, group_advantages, policy_loss
from gsjax.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    lr: float = 1e-6  # the reference's GRPO learning rate (8B)
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    temperature: float = 0.7  # the sampler's; log-probabilities are taken at the same temperature
    normalize_std: bool = True  # False = Dr.GRPO
    drop_degenerate_groups: bool = False
    loss: LossConfig = LossConfig()
    length_buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclasses.dataclass(frozen=True)
class Sample:
    """What the learner needs of one trajectory."""

    tokens: Sequence[int]
    loss_mask: Sequence[int]
    sampler_logprobs: Sequence[float]
    sampled: Sequence[int]
    group: int | str  # samples of the same prompt share a group
    reward: float
    failed: bool = False  # an infrastructure failure: out of the group statistics and the loss


@dataclasses.dataclass(frozen=True)
class LearnerBatch:
    tokens: np.ndarray  # [B, L] int32
    loss_mask: np.ndarray  # [B, L] float32
    sampler_logprobs: np.ndarray  # [B, L] float32
    sampled_mask: np.ndarray  # [B, L] float32
    advantages: np.ndarray  # [B] float32


def make_batch(samples: Sequence[Sample], cfg: GRPOConfig) -> LearnerBatch:
    rewards = np.array([s.reward for s in samples], np.float64)
    ids: dict[int | str, int] = {}
    groups = np.array([ids.setdefault(s.group, len(ids)) for s in samples])
    valid = np.array([not s.failed for s in samples])
    adv = group_advantages(rewards, groups, valid, normalize_std=cfg.normalize_std)
    if cfg.drop_degenerate_groups:
        adv = np.where(degenerate_groups(rewards, groups, valid), 0.0, adv).astype(np.float32)
    longest = max(len(s.tokens) for s in samples)
    length = next((b for b in cfg.length_buckets if b >= longest), None)
    if length is None:
        raise ValueError(f"a trajectory of {longest} tokens is longer than the largest bucket {cfg.length_buckets[-1]}")
    shape = (len(samples), length)
    tokens, mask = np.zeros(shape, np.int32), np.zeros(shape, np.float32)
    slp, smask = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for i, s in enumerate(samples):
        n = len(s.tokens)
        tokens[i, :n] = s.tokens
        mask[i, :n] = 0.0 if s.failed else np.asarray(s.loss_mask, np.float32)
        slp[i, :n] = s.sampler_logprobs
        smask[i, :n] = s.sampled
    return LearnerBatch(tokens, mask, slp, smask, adv.astype(np.float32))


class GRPOTrainer(TrainState):
    def __init__(self, model: Qwen3, cfg: GRPOConfig):
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                         optax.adamw(cfg.lr, b1=0.9, b2=0.999, weight_decay=cfg.weight_decay))
        super().__init__(model, tx, partial(_grpo_loss, cfg=cfg))
        self.cfg = cfg
        self.ref_params = None
        if cfg.loss.kl_coef:  # a frozen copy of the starting policy, for the KL term
            self.ref_params = jax.tree.map(jnp.copy, self.params)
            self._ref_logprobs = jax.jit(
                lambda p, tokens: token_logprobs(nnx.merge(self.graphdef, p), tokens, temperature=cfg.temperature))

    def step(self, samples: Sequence[Sample]) -> dict[str, float]:
        batch = dataclasses.asdict(make_batch(samples, self.cfg))
        if self.ref_params is not None:
            batch["ref_logprobs"] = self._ref_logprobs(self.ref_params, jnp.asarray(batch["tokens"]))
        metrics = self.update(batch)
        metrics["advantage_abs_mean"] = float(np.abs(batch["advantages"]).mean())
        metrics["batch_len"] = float(batch["tokens"].shape[1])  # the length bucket
        return metrics


def _grpo_loss(model: Qwen3, batch, cfg: GRPOConfig):
    logp = token_logprobs(model, batch["tokens"], temperature=cfg.temperature)
    old = jax.lax.stop_gradient(logp)
    # The mismatch is measured where the sampler drew the token; elsewhere it is 0.
    sampler = jnp.where(batch["sampled_mask"] > 0, batch["sampler_logprobs"], old)
    return policy_loss(logp, old, batch["advantages"], batch["loss_mask"], cfg.loss, sampler_logprobs=sampler,
                       ref_logprobs=batch.get("ref_logprobs"))
