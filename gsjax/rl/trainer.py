"""The GRPO learner: trajectories + rewards -> packed rows -> one jitted clipped-policy update.

The learner sees only arrays: each trajectory's tokens, loss mask, sampler log-probabilities and
advantage (per token), and the weight of each token in the batch loss, packed into rows of
`row_len` (`gsjax.data.packing`; several trajectories per row, segment ids keep them apart) and
split into micro-batches of a token budget by `TrainState`. As in the reference's setting (one PPO
epoch, the whole step's batch as one mini-batch), the old policy is the current one:
`old = stop_gradient(logp)` gives ratio 1 in value and the policy gradient in derivative, without
a second forward pass. The sampler/trainer log-probability mismatch is measured on every step (and
can be corrected with a truncated importance weight).

A vision-language policy's samples carry the pixels the sampler encoded (`pixel_values`,
`image_grids`, in token-stream order); they are packed with their trajectory, and the learner's
pass encodes them again through the same tower (`gsjax.data.vision_batch`), so the log-probabilities
are of the same pixels. The vision tower trains with the rest unless `train_vision=False`.

Advantages and the loss weights need the whole step's rewards and token counts: with several
processes, each packs its own trajectories and these few numbers are gathered first.
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
from jax.sharding import Mesh

from gsjax.data.packing import RowImages, pack_with_images
from gsjax.data.vision_batch import model_input
from gsjax.models.interface import CausalLM
from gsjax.models.losses import token_logprobs
from gsjax.parallel import allgather_rows, allgather_strings
from gsjax.rl.grpo import (LossConfig, degenerate_groups, group_advantages, lone_samples, per_token_loss,
                            sequence_weights)
from gsjax.train_state import TrainState, except_vision


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    lr: float = 1e-6  # the reference's GRPO learning rate (8B)
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    temperature: float = 0.7  # the sampler's; log-probabilities are taken at the same temperature
    normalize_std: bool = True  # False = Dr.GRPO
    drop_degenerate_groups: bool = False
    # Which episodes leave the group statistics or the update (`gsjax.rl.grpo.parse_filtering`):
    # gsjax's rule by default; `parse_filtering("reference")` is the reference's compact filtering.
    filtering: frozenset[str] = frozenset({"failures_out"})
    loss: LossConfig = LossConfig()
    row_len: int = 1024  # packed row length: at least the longest conversation (the cache length)
    micro_batch_tokens: int = 0  # per device and micro-batch (the reference: 37,000); 0 = one micro-batch
    vocab_chunk: int = 0  # log-probabilities in vocabulary chunks of this size (0 = all at once)
    # The vision tower and its mergers train too (a vision-language policy). The reference's GRPO
    # (verl, Gen-Searcher's gen_image_deepresearch_8B_fsdp_8gpu.sh) leaves verl's
    # actor.freeze_vision_tower at its default, false: the whole model trains.
    train_vision: bool = True


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
    masked: bool = False  # filtered after the advantages (`rl.filtering`): in the statistics, out of the loss
    # What a vision-language policy was shown, as the sampler encoded it: the processor's pixel
    # rows [P, patch_dim] and patch grids [n, 3] of the images in token-stream order (None: none).
    pixel_values: np.ndarray | None = None
    image_grids: np.ndarray | None = None
    # Log-probabilities under the distribution the sampler drew from (after top-k / top-p): the
    # behaviour policy of the importance correction. None: the same as `sampler_logprobs`.
    behavior_logprobs: Sequence[float] | None = None


# Why a step left the weights as they were (`skip_reason`).
SKIP_NOTHING = "no sample to train"
SKIP_NONFINITE = "non-finite loss or gradient"

ROW_FIELDS = {"tokens": np.int32, "loss_mask": np.float32, "sampler_logprobs": np.float32,
              "behavior_logprobs": np.float32, "sampled_mask": np.float32, "advantages": np.float32,
              "loss_weights": np.float32, "mean_weights": np.float32, "sampled_weights": np.float32}


@dataclasses.dataclass(frozen=True)
class StepStatistics:
    """What each of this process's samples needs from the whole step (all processes)."""

    advantages: np.ndarray  # [n] one per sample
    in_update: np.ndarray  # [n] whether the sample's loss enters the update
    loss_weights: np.ndarray  # [n] weight of each of a sample's loss tokens in the batch loss
    mean_weights: np.ndarray  # [n] the same for token means (metrics)
    sampled_weights: np.ndarray  # [n] the same for means over the sampled loss tokens (the mismatch)
    advantage_abs_mean: float  # over the whole step
    update_samples: int  # samples of the whole step whose loss enters the update


def step_statistics(samples: Sequence[Sample], cfg: GRPOConfig) -> StepStatistics:
    """Advantages and loss weights from the whole step's rewards, groups and token counts,
    gathered over processes (a sample's group is its prompt id, the same on every process).
    A sample leaves the update (no loss, out of the loss normaliser) when it failed, was filtered
    (`masked`), is alone in its group, or is in a group without signal under `drop_degenerate_groups`."""
    groups = [str(s.group) for s in samples]
    local = np.array([[s.reward, not s.failed, s.masked, float(np.sum(s.loss_mask)),
                       float(np.dot(s.loss_mask, s.sampled))] for s in samples], np.float64).reshape(len(samples), 5)
    rows, offset = allgather_rows(local)
    all_groups = allgather_strings(groups)
    ids = {g: i for i, g in enumerate(dict.fromkeys(all_groups))}
    rewards, valid, masked, n_tokens, n_sampled = rows[:, 0], rows[:, 1] > 0, rows[:, 2] > 0, rows[:, 3], rows[:, 4]
    group_ids = np.array([ids[g] for g in all_groups])
    adv = group_advantages(rewards, group_ids, valid, normalize_std=cfg.normalize_std)
    keep = valid & ~masked & ~lone_samples(group_ids, valid)
    if cfg.drop_degenerate_groups:
        keep &= ~degenerate_groups(rewards, group_ids, valid)
    adv, n_tokens, n_sampled = np.where(keep, adv, 0.0), np.where(keep, n_tokens, 0.0), np.where(keep, n_sampled, 0.0)
    mine = slice(offset, offset + len(samples))
    return StepStatistics(adv[mine].astype(np.float32), keep[mine],
                          sequence_weights(n_tokens, cfg.loss.agg, horizon=cfg.row_len)[mine],
                          sequence_weights(n_tokens, "token-mean")[mine], sequence_weights(n_sampled, "token-mean")[mine],
                          float(np.abs(adv).mean()) if len(adv) else 0.0, int(keep.sum()))


def make_rows(samples: Sequence[Sample], stats: StepStatistics, cfg: GRPOConfig) -> dict[str, np.ndarray]:
    """This process's samples as packed rows [R, row_len] of ROW_FIELDS, segment ids and positions."""
    return pack_samples(samples, stats, cfg)[0]


def pack_samples(samples: Sequence[Sample], stats: StepStatistics, cfg: GRPOConfig
                 ) -> tuple[dict[str, np.ndarray], RowImages | None]:
    """`make_rows`, and the rows' images (None when no sample has any)."""
    longest = max((len(s.tokens) for s in samples), default=0)
    if longest > cfg.row_len:
        raise ValueError(f"a trajectory of {longest} tokens is longer than the learner's rows (row_len={cfg.row_len}); "
                         "row_len must be at least the sampler's cache length")
    seqs = []
    for s, a, keep, w, m, ws in zip(samples, stats.advantages, stats.in_update, stats.loss_weights, stats.mean_weights,
                                    stats.sampled_weights):
        n = len(s.tokens)
        mask = np.asarray(s.loss_mask, np.float32) if keep else np.zeros(n, np.float32)
        behavior = s.sampler_logprobs if s.behavior_logprobs is None else s.behavior_logprobs
        seqs.append({"tokens": s.tokens, "loss_mask": mask, "sampler_logprobs": s.sampler_logprobs,
                     "behavior_logprobs": behavior, "sampled_mask": s.sampled, "advantages": np.full(n, a),
                     "loss_weights": mask * w, "mean_weights": mask * m,
                     "sampled_weights": mask * np.asarray(s.sampled, np.float32) * ws})
    images = [None if s.pixel_values is None else (s.pixel_values, s.image_grids) for s in samples]
    if all(i is None for i in images):
        images = None
    return pack_with_images(seqs, cfg.row_len, ROW_FIELDS, images, min_rows=1)


class GRPOTrainer(TrainState):
    def __init__(self, model: CausalLM, cfg: GRPOConfig, mesh: Mesh | None = None):
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                         optax.adamw(cfg.lr, b1=0.9, b2=0.999, weight_decay=cfg.weight_decay))
        super().__init__(model, tx, partial(_grpo_loss, graphdef=nnx.graphdef(model), cfg=cfg), mesh=mesh,
                         micro_batch_tokens=cfg.micro_batch_tokens,
                         trainable=None if cfg.train_vision else except_vision)
        self.cfg = cfg
        # A frozen copy of the starting policy for the KL term, placed like the parameters.
        self.ref_params = None
        if cfg.loss.kl_coef:
            self.ref_params = self.params if self.abstract else jax.tree.map(jnp.copy, self.params)

    def step(self, samples: Sequence[Sample], stats: StepStatistics | None = None) -> dict[str, float]:
        """One update on this process's samples (every process calls it with its own). A step in
        which no sample enters the update, or whose loss or gradient is not finite, leaves the
        weights and the optimizer state as they are (an update of zero gradients would still move
        them: Adam's momentum, weight decay) and says so in `update_skipped` and `skip_reason`.
        `stats`: the samples' `step_statistics`, when the caller took them already (to record the
        advantages the update uses)."""
        stats = step_statistics(samples, self.cfg) if stats is None else stats
        if len(stats.advantages) != len(samples):
            raise ValueError(f"GRPOTrainer.step: statistics of {len(stats.advantages)} samples for {len(samples)} samples")
        summary = {"advantage_abs_mean": stats.advantage_abs_mean, "update_samples": float(stats.update_samples)}
        if stats.update_samples == 0:
            return {**summary, "update_skipped": 1.0, "skip_reason": SKIP_NOTHING,
                    "loss": 0.0, "grad_norm": 0.0, "param_norm": float(optax.tree.norm(self.params)), "packed_rows": 0.0}
        rows, images = pack_samples(samples, stats, self.cfg)
        metrics = self.update(rows, self.ref_params, images, nonfinite="skip")
        metrics.update(summary, packed_rows=float(len(rows["tokens"])))
        if metrics["update_skipped"]:
            metrics["skip_reason"] = SKIP_NONFINITE
        return metrics


def _grpo_loss(model: CausalLM, batch, ref_params, *, graphdef, cfg: GRPOConfig):
    def logprobs(m):
        return token_logprobs(m, model_input(batch), temperature=cfg.temperature, vocab_chunk=cfg.vocab_chunk)

    logp = logprobs(model)
    old = jax.lax.stop_gradient(logp)
    # Where the sampler drew the token, its log-probabilities; elsewhere (template tokens) the learner's.
    drawn = batch["sampled_mask"] > 0
    sampler = jnp.where(drawn, batch["sampler_logprobs"], old)
    behavior = jnp.where(drawn, batch["behavior_logprobs"], old)
    ref = None if ref_params is None else jax.lax.stop_gradient(logprobs(nnx.merge(graphdef, ref_params)))
    per_token, values = per_token_loss(logp, old, batch["advantages"], cfg.loss, sampler_logprobs=sampler,
                                       behavior_logprobs=behavior, ref_logprobs=ref)
    loss = (per_token * batch["loss_weights"]).sum()
    # The mismatch is a mean over the tokens the sampler drew; the other metrics over every loss token.
    return loss, {k: (v * batch["sampled_weights" if k == "mismatch_abs" else "mean_weights"]).sum()
                  for k, v in values.items()}
