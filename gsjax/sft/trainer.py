"""The SFT step and loop: masked next-token loss on packed rows, AdamW with a cosine schedule and
warmup, gradient clipping, one jitted step for every batch (one row shape)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from tqdm import tqdm

from gsjax.models.losses import masked_mean_nll, token_logprobs
from gsjax.models.qwen3 import Qwen3
from gsjax.sft.data import PackedBatch


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


def _arrays(batch: PackedBatch) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in dataclasses.asdict(batch).items()}


class SFTTrainer:
    def __init__(self, model: Qwen3, cfg: SFTConfig):
        self.cfg = cfg
        self.graphdef, self.params = nnx.split(model)  # the decoder holds parameters only
        self.tx = optimizer(cfg)
        self.opt_state = self.tx.init(self.params)
        self.step_count = 0
        self.compiles = 0

        @partial(jax.jit, donate_argnums=(0, 1))
        def step(params, opt_state, batch):
            self.compiles += 1
            loss, grads = jax.value_and_grad(lambda p: sft_loss(nnx.merge(self.graphdef, p), batch))(params)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self._step = step

    @property
    def model(self) -> Qwen3:
        return nnx.merge(self.graphdef, self.params)

    def train_step(self, batch: PackedBatch) -> float:
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, _arrays(batch))
        self.step_count += 1
        return float(loss)

    def fit(self, data: Iterator[PackedBatch], progress: bool = True) -> list[float]:
        losses = []
        bar = tqdm(range(self.cfg.steps - self.step_count), desc="sft", disable=not progress)
        for _ in bar:
            losses.append(self.train_step(next(data)))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        return losses
