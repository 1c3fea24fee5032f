"""The SFT step and loop: masked next-token loss on packed rows, AdamW with a cosine schedule and
warmup, gradient clipping, one jitted step for every batch (one row shape), micro-batched by a
token budget per device like the GRPO learner.

With several processes, every process reads the same batch and trains on its share of the rows
(a contiguous block, with its images); the loss is the token mean over the whole batch either way.

A vision-language policy's rows may hold images (`PackedBatch.images`, see `gsjax.sft.data`); by
default its vision tower and mergers stay frozen (`train_vision=False`), as the reference's SFT
has them (LLaMA-Factory `freeze_vision_tower: true`, `freeze_multi_modal_projector: true`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from gsjax.data.packing import RowImages
from gsjax.data.vision_batch import model_input
from gsjax.models.interface import CausalLM
from gsjax.models.losses import token_logprobs
from gsjax.sft.data import PackedBatch
from gsjax.train_state import TrainState, except_vision


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    steps: int = 600
    lr: float = 1e-5  # the reference's SFT learning rate (Qwen3-VL-8B)
    warmup_frac: float = 0.02
    weight_decay: float = 1e-6
    clip_norm: float = 1.0
    micro_batch_tokens: int = 0  # per device and micro-batch; 0 = one micro-batch
    vocab_chunk: int = 0  # log-probabilities in vocabulary chunks of this size (0 = all at once)
    # Train the vision tower and its mergers (a vision-language policy). False freezes all of
    # `visual` (no update, no weight decay), as the reference's SFT does (freeze_vision_tower and
    # freeze_multi_modal_projector in gen_qwen3_sft.yaml; LLaMA-Factory's Qwen3-VL keys leave out
    # pos_embed and the deepstack mergers, which it would still train).
    train_vision: bool = False


def optimizer(cfg: SFTConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, max(1, int(cfg.warmup_frac * cfg.steps)), max(cfg.steps, 2), end_value=0.0)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), optax.adamw(schedule, weight_decay=cfg.weight_decay))


def sft_loss(model: CausalLM, batch, aux=None, *, vocab_chunk: int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Negative log-likelihood of the loss tokens, each weighted by `mean_weights` (1 / the batch's
    loss tokens: a token mean that adds up over micro-batches)."""
    logp = token_logprobs(model, model_input(batch), vocab_chunk=vocab_chunk)
    return -(logp * batch["mean_weights"]).sum(), {}


def process_share(batch: PackedBatch) -> tuple[dict[str, np.ndarray], RowImages | None]:
    """This process's block of a batch's rows, with the token-mean weights of the whole batch,
    and the block's images."""
    total = float(batch.loss_mask.sum())
    n, p = len(batch.tokens), jax.process_count()
    if n % p:
        raise ValueError(f"sft.rows_per_batch={n} does not divide over {p} processes")
    mine = batch.select(jax.process_index() * (n // p), (jax.process_index() + 1) * (n // p))
    share = mine.rows()
    share["mean_weights"] = share["loss_mask"] / max(total, 1.0)
    return share, mine.images


class SFTTrainer(TrainState):
    def __init__(self, model: CausalLM, cfg: SFTConfig, mesh: Mesh | None = None):
        loss = lambda m, b, aux: sft_loss(m, b, vocab_chunk=cfg.vocab_chunk)  # noqa: E731
        super().__init__(model, optimizer(cfg), loss, mesh=mesh, micro_batch_tokens=cfg.micro_batch_tokens,
                         trainable=None if cfg.train_vision else except_vision)
        self.cfg = cfg
        self.step_count = 0

    def train_step(self, batch: PackedBatch) -> float:
        rows, images = process_share(batch)
        loss = self.update(rows, images=images)["loss"]
        self.step_count += 1
        return loss

    def fit(self, data: Iterator[PackedBatch], progress: bool = True) -> list[float]:
        losses = []
        bar = tqdm(range(self.cfg.steps - self.step_count), desc="sft", disable=not progress)
        for _ in bar:
            losses.append(self.train_step(next(data)))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        return losses
