"""Parameters and optimizer state of a model, advanced by one jitted step with donated buffers.
The SFT and GRPO trainers are this plus their loss and their batches."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gsjax.models.qwen3 import Qwen3

# loss_fn(model, batch) -> (scalar loss, metrics); gradients flow through the loss only.
LossFn = Callable[[Qwen3, Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


class TrainState:
    def __init__(self, model: Qwen3, tx: optax.GradientTransformation, loss_fn: LossFn):
        self.graphdef, self.params = nnx.split(model)  # the decoder holds parameters only
        self.tx = tx
        self.opt_state = tx.init(self.params)
        self.compiles = 0  # traces of the step; stays 1 while batch shapes stay in one bucket

        @partial(jax.jit, donate_argnums=(0, 1))
        def update(params, opt_state, batch):
            self.compiles += 1
            grad_fn = jax.value_and_grad(lambda p: loss_fn(nnx.merge(self.graphdef, p), batch), has_aux=True)
            (loss, metrics), grads = grad_fn(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
            return optax.apply_updates(params, updates), opt_state, metrics

        self._update = update

    @property
    def model(self) -> Qwen3:
        return nnx.merge(self.graphdef, self.params)

    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One optimizer step on `batch` (arrays by name); returns the step's metrics."""
        arrays = {k: jnp.asarray(v) for k, v in batch.items()}
        self.params, self.opt_state, metrics = self._update(self.params, self.opt_state, arrays)
        return {k: float(v) for k, v in metrics.items()}
