"""Parameters and optimizer state on the run's mesh, advanced by one jitted step over micro-batches.
The SFT and GRPO trainers are this plus their loss and their rows.

A step takes this process's packed rows ([R, L] arrays by name: `tokens`, `positions`,
`segment_ids`, `loss_mask` and whatever the loss reads) and splits them into micro-batches of a
token budget per device (`micro_batch_tokens`, the reference's dynamic batching; 0 = one
micro-batch of all rows). Inside one jitted program the micro-batches' gradients are summed in
float32 (`lax.scan`; an all-padding micro-batch is skipped by `lax.cond`), then the optimizer
steps once. The loss must be a sum over tokens of globally normalised weights (see
`gsjax.rl.grpo.sequence_weights`), so the summed loss and gradients are exactly those of the whole
batch. The number of micro-batches is bucketed to a power of two, so few shapes compile.

Batches enter as global arrays (`jax.make_array_from_process_local_data`: each process gives its
own rows), sharded over `data` x `fsdp`; parameters and optimizer state are sharded by the logical
rules, and the step has explicit in/out shardings. Parameters and optimizer state are donated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gsjax.models.interface import CausalLM
from gsjax.parallel import allgather_rows, logical_to_spec, make_mesh, state_shardings

# loss_fn(model, micro_batch, aux) -> (loss, metrics), each a sum over the micro-batch's tokens of
# globally normalised weights; gradients flow through the loss only. `aux` is anything else the
# step takes as input (e.g. a frozen reference policy's parameters), or None.
LossFn = Callable[[CausalLM, Mapping[str, jax.Array], Any], tuple[jax.Array, dict[str, jax.Array]]]
ROW_AXES = (None, "act_batch", "act_len")  # [micro-batch, row, token]


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _largest(value: int) -> int:
    """The largest of every process's `value`."""
    return int(allgather_rows(np.asarray([[value]]))[0].max())


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


class TrainState:
    def __init__(self, model: CausalLM, tx: optax.GradientTransformation, loss_fn: LossFn, *,
                 mesh: Mesh | None = None, micro_batch_tokens: int = 0):
        self.mesh = mesh if mesh is not None else make_mesh({"data": 1}, jax.devices()[:1])
        self.tx, self.loss_fn = tx, loss_fn
        self.micro_batch_tokens = micro_batch_tokens
        self.graphdef, params = nnx.split(model)  # the decoder holds parameters only
        self.param_shardings = state_shardings(params, self.mesh)
        abstract_opt = jax.eval_shape(tx.init, params)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, self.param_shardings,
                                                   transform_non_params=lambda _: replicated)
        # A model from nnx.eval_shape gives an abstract state (shapes, dtypes and shardings, no
        # values) for ahead-of-time compilation (`lower_update`, gsjax.plan).
        self.abstract = all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
        if self.abstract:
            self.params = _with_shardings(params, self.param_shardings)
            self.opt_state = _with_shardings(abstract_opt, self.opt_shardings)
        else:
            self.params = jax.device_put(params, self.param_shardings)
            self.opt_state = jax.jit(tx.init, out_shardings=self.opt_shardings)(self.params)
        self.batch_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        self.compiles = 0  # traces of the step; one per (micro-batches, rows) shape
        self._steps: dict[Any, Callable] = {}

    @property
    def model(self) -> CausalLM:
        return nnx.merge(self.graphdef, self.params)

    # ------------------------------------------------------------------ batches

    def rows_per_micro_batch(self, row_len: int, rows: int) -> int:
        """Global rows per micro-batch: the token budget per device, times the batch shards; with
        no budget, all rows (bucketed to a power of two)."""
        if self.micro_batch_tokens:
            per_device = max(1, self.micro_batch_tokens // row_len)
        else:
            per_device = next_pow2(math.ceil(_largest(rows) * jax.process_count() / self.batch_shards))
        return per_device * self.batch_shards

    def global_batch(self, rows: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows [R, L] -> global arrays [M, rows per micro-batch, L]."""
        local_rows, row_len = next(iter(rows.values())).shape
        per_micro = self.rows_per_micro_batch(row_len, local_rows)
        per_micro_local = per_micro // jax.process_count()
        micro = next_pow2(_largest(math.ceil(local_rows / per_micro_local)))
        sharding = NamedSharding(self.mesh, logical_to_spec(ROW_AXES, (micro, per_micro, row_len),
                                                            dict(self.mesh.shape)))
        out = {}
        for name, value in rows.items():
            padded = np.zeros((micro * per_micro_local, row_len), value.dtype)
            padded[:local_rows] = value
            local = padded.reshape(micro, per_micro_local, row_len)
            out[name] = jax.make_array_from_process_local_data(sharding, local, (micro, per_micro, row_len))
        return out

    # ------------------------------------------------------------------ the step

    def _accumulate(self, params, batch, aux):
        """(loss, metrics, grads) summed over the micro-batches of `batch` [M, R, L]."""
        def one(mb):
            model_loss = lambda p: self.loss_fn(nnx.merge(self.graphdef, p), mb, aux)  # noqa: E731
            (loss, metrics), grads = jax.value_and_grad(model_loss, has_aux=True)(params)
            return loss, metrics, jax.tree.map(lambda g: g.astype(jnp.float32), grads)

        first = jax.tree.map(lambda x: x[0], batch)
        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, first))

        def body(acc, mb):
            out = jax.lax.cond(mb["loss_mask"].any(), one, lambda _: zero, mb)
            return jax.tree.map(jnp.add, acc, out), None

        (loss, metrics, grads), _ = jax.lax.scan(body, zero, batch)
        return loss, metrics, grads

    def _step_fn(self, batch: Mapping[str, jax.Array], aux: Any) -> Callable:
        key = (tuple(sorted((k, v.shape, str(v.dtype)) for k, v in batch.items())), aux is None)
        if key in self._steps:
            return self._steps[key]
        replicated = NamedSharding(self.mesh, PartitionSpec())
        batch_shardings = {k: v.sharding for k, v in batch.items()}
        aux_shardings = None if aux is None else jax.tree.map(lambda x: x.sharding, aux)

        def update(params, opt_state, batch, aux):
            self.compiles += 1
            loss, metrics, grads = self._accumulate(params, batch, aux)
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
            return optax.apply_updates(params, updates), opt_state, metrics

        fn = jax.jit(update, donate_argnums=(0, 1),
                     in_shardings=(self.param_shardings, self.opt_shardings, batch_shardings, aux_shardings),
                     out_shardings=(self.param_shardings, self.opt_shardings, replicated))
        self._steps[key] = fn
        return fn

    def lower_update(self, fields: Mapping[str, Any], micro: int, rows_per_micro: int, row_len: int, aux: Any = None):
        """The step lowered for a batch of `micro` micro-batches of `rows_per_micro` rows of
        `row_len` tokens (fields: name -> dtype), without data: `.compile()` it for its memory and
        cost analyses."""
        shape = (micro, rows_per_micro, row_len)
        sharding = NamedSharding(self.mesh, logical_to_spec(ROW_AXES, shape, dict(self.mesh.shape)))
        batch = {k: jax.ShapeDtypeStruct(shape, dt, sharding=sharding) for k, dt in fields.items()}
        with jax.set_mesh(self.mesh):
            return self._step_fn(batch, aux).lower(self.params, self.opt_state, batch, aux)

    def update(self, rows: Mapping[str, np.ndarray], aux: Any = None) -> dict[str, float]:
        """One optimizer step on this process's packed rows; returns the step's metrics."""
        batch = self.global_batch(rows)
        with jax.set_mesh(self.mesh):
            self.params, self.opt_state, metrics = self._step_fn(batch, aux)(self.params, self.opt_state, batch, aux)
        out = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(out["loss"]):
            raise FloatingPointError(f"the loss is {out['loss']} (not finite); metrics {out}")
        micro, rows = next(iter(batch.values())).shape[:2]
        out.update(micro_batches=float(micro), batch_rows=float(rows))  # the compiled shape
        return out

    def loss_and_grads(self, rows: Mapping[str, np.ndarray], aux: Any = None) -> tuple[float, Any]:
        """The loss and (float32) gradients the next `update` would apply, without applying them."""
        batch = self.global_batch(rows)
        with jax.set_mesh(self.mesh):
            loss, _, grads = jax.jit(self._accumulate)(self.params, batch, aux)
        return float(loss), grads
