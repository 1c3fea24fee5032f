"""The SFT step and loop: masked next-token loss on packed rows, AdamW with a cosine schedule and
warmup, gradient clipping, one jitted step for every batch (one row shape)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import optax
from tqdm import tqdm

from gsjax.models.losses import masked_mean_nll, token_logprobs
from gsjax.models.qwen3 import Qwen3
from gsjax.sft.data import PackedBatch
from gsjax.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    steps: int = 600
    lr: float = 1e-5  # the reference's SFT learning rate (Qwen3-VL-8B)
    warmup_frac: float = 0.02
    weight_decay: float = 1e-6
    clip_norm: float = 1.0


def optimizer(cfg: SFTConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, max(1, int(cfg.warmup_frac * cfg.steps)), max(cfg.steps, 2), end_value=0.0)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), optax.adamw(schedule, weight_decay=cfg.weight_decay))


def sft_loss(model: Qwen3, batch: dict[str, jax.Array]) -> jax.Array:
    logp = token_logprobs(model, batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    return masked_mean_nll(logp, batch["loss_mask"])


def _loss_and_metrics(model: Qwen3, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    return sft_loss(model, batch), {}


class SFTTrainer(TrainState):
    def __init__(self, model: Qwen3, cfg: SFTConfig):
        super().__init__(model, optimizer(cfg), _loss_and_metrics)
        self.cfg = cfg
        self.step_count = 0

    def train_step(self, batch: PackedBatch) -> float:
        loss = self.update(dataclasses.asdict(batch))["loss"]
        self.step_count += 1
        return loss

    def fit(self, data: Iterator[PackedBatch], progress: bool = True) -> list[float]:
        losses = []
        bar = tqdm(range(self.cfg.steps - self.step_count), desc="sft", disable=not progress)
        for _ in bar:
            losses.append(self.train_step(next(data)))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        return losses
