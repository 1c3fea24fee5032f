"""Parameters and optimizer state on the run's mesh, advanced by one jitted step over micro-batches.
The SFT and GRPO trainers are this plus their loss and their rows.

A step takes this process's packed rows ([R, L] arrays by name: `tokens`, `positions`,
`segment_ids`, `loss_mask` and whatever the loss reads; a field may have more axes after [R, L])
and splits them into micro-batches of a token budget per device (`micro_batch_tokens`, the
reference's dynamic batching; 0 = one micro-batch of all rows). Inside one jitted program the
micro-batches' gradients are summed in float32 (`lax.scan`; an all-padding micro-batch is skipped
by `lax.cond`), then the optimizer steps once. The loss must be a sum over tokens of globally
normalised weights (see `gsjax.rl.grpo.sequence_weights`), so the summed loss and gradients are
exactly those of the whole batch. The number of micro-batches is bucketed to a power of two, so few
shapes compile.

A vision-language policy's rows may hold images (`gsjax.data.packing.RowImages`): then each
micro-batch also carries its images' patches and the tower's layout ([M, P, ...], one bucket P per
step) and the rows carry multimodal positions [R, L, 3] and each image token's embedding index
(`gsjax.data.vision_batch`). A step whose rows (on every process) hold no image runs the text-only
program. `trainable` (a rule on parameter paths) freezes the other parameters: no gradient is
computed for them and the optimizer leaves them exactly as they are (no weight decay either).

Batches enter as global arrays (`jax.make_array_from_process_local_data`: each process gives its
own rows and its own images), sharded over `data` x `fsdp` (rows, and the patch axis); parameters
and optimizer state are sharded by the logical rules, and the step has explicit in/out shardings.
Parameters and optimizer state are donated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gsjax.data import vision_batch
from gsjax.data.packing import SEGMENT_IDS, RowImages
from gsjax.models.interface import CausalLM
from gsjax.parallel import allgather_rows, logical_to_spec, make_mesh, state_shardings

# loss_fn(model, micro_batch, aux) -> (loss, metrics), each a sum over the micro-batch's tokens of
# globally normalised weights; gradients flow through the loss only. `aux` is anything else the
# step takes as input (e.g. a frozen reference policy's parameters), or None.
LossFn = Callable[[CausalLM, Mapping[str, jax.Array], Any], tuple[jax.Array, dict[str, jax.Array]]]
ROW_AXES = (None, "act_batch", "act_len")  # [micro-batch, row, token]
PATCH_AXES = (None, "act_patches")  # [micro-batch, patch] (each process's images on its devices)
TRAIN, FROZEN = "train", "frozen"


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _largest(value: int) -> int:
    """The largest of every process's `value`."""
    return int(allgather_rows(np.asarray([[value]]))[0].max())


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def _names(keypath) -> tuple:
    """A jax key path into an nnx.State as the parameter's nnx path (names and indices; the
    Variable's `.value` attribute dropped)."""
    return tuple(k.key if hasattr(k, "key") else k.idx for k in keypath if not isinstance(k, jax.tree_util.GetAttrKey))


def except_vision(path: tuple) -> bool:
    """The `trainable` rule that freezes a vision-language policy's vision tower with its
    mergers (Qwen3VL's `visual`): everything else trains."""
    return not path or path[0] != "visual"


class TrainState:
    def __init__(self, model: CausalLM, tx: optax.GradientTransformation, loss_fn: LossFn, *,
                 mesh: Mesh | None = None, micro_batch_tokens: int = 0,
                 trainable: Callable[[tuple], bool] | None = None):
        """`trainable(path)` (path: the parameter's names and indices, e.g. ("visual", "blocks", 0,
        ...)) says which parameters train; None: all."""
        self.mesh = mesh if mesh is not None else make_mesh({"data": 1}, jax.devices()[:1])
        self.loss_fn = loss_fn
        self.micro_batch_tokens = micro_batch_tokens
        self.vision = vision_batch.vision_config(model)
        self.graphdef, params = nnx.split(model)  # the decoder holds parameters only
        # Frozen parameters: no gradients (they stay out of the differentiated state) and no
        # update (optax.set_to_zero; the optimizer, its clipping norm included, sees only the rest).
        self._trainable = None
        if trainable is not None:
            labels = jax.tree_util.tree_map_with_path(lambda p, _: TRAIN if trainable(_names(p)) else FROZEN, params)
            if FROZEN in jax.tree.leaves(labels):
                self._trainable = lambda path, _: trainable(tuple(path))  # noqa: E731 (an nnx filter)
                tx = optax.multi_transform({TRAIN: tx, FROZEN: optax.set_to_zero()}, labels)
        self.tx = tx
        self.param_shardings = state_shardings(params, self.mesh)
        abstract_opt = jax.eval_shape(tx.init, params)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731 (frozen leaves of a masked state)
        self.opt_shardings = optax.tree_map_params(tx, lambda v, s: v if masked(v) else s, abstract_opt,
                                                   self.param_shardings, transform_non_params=lambda _: replicated,
                                                   is_leaf=masked)
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

    def _row_sharding(self, shape: tuple[int, ...]) -> NamedSharding:
        """[micro-batch, row, token, ...]: rows over data x fsdp."""
        axes = ROW_AXES + (None,) * (len(shape) - len(ROW_AXES))
        return NamedSharding(self.mesh, logical_to_spec(axes, shape, dict(self.mesh.shape)))

    def _patch_sharding(self, shape: tuple[int, ...]) -> NamedSharding:
        """[micro-batch, patch, ...]: patches over data x fsdp (process p's block is its images)."""
        axes = PATCH_AXES + (None,) * (len(shape) - len(PATCH_AXES))
        return NamedSharding(self.mesh, logical_to_spec(axes, shape, dict(self.mesh.shape)))

    def patch_unit(self) -> int:
        """Each process's bucket of patches per micro-batch is this times a power of two: whole
        merged tokens, and divisible over the process's data x fsdp shards."""
        return math.lcm(self.vision.vision.merge_unit, max(1, self.batch_shards // jax.process_count()))

    def _vision_fields(self, local: dict[str, np.ndarray], images: RowImages | None, micro: int,
                       per_micro_local: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """This process's padded rows with the vision fields of its images, and the per-micro-batch
        fields ({} when no process has an image this step: the text-only program)."""
        images = images if images is not None else RowImages.empty()
        needed = _largest(vision_batch.micro_batch_patches(images, micro, per_micro_local))
        if needed == 0:
            return local, {}
        patches = vision_batch.bucket(needed, self.patch_unit())
        per_row, per_micro = vision_batch.vision_arrays(local, images, self.vision, micro, per_micro_local, patches,
                                                        jax.process_index())
        return {**local, **per_row}, per_micro

    def global_batch(self, rows: Mapping[str, np.ndarray], images: RowImages | None = None) -> dict[str, jax.Array]:
        """This process's rows [R, L, ...] -> global arrays [M, rows per micro-batch, L, ...]; with
        images (a vision-language model), also the vision fields of `gsjax.data.vision_batch`,
        per-micro-batch ones as [M, P (all processes), ...]."""
        local_rows, row_len = rows[SEGMENT_IDS].shape
        per_micro = self.rows_per_micro_batch(row_len, local_rows)
        per_micro_local = per_micro // jax.process_count()
        micro = next_pow2(_largest(math.ceil(local_rows / per_micro_local)))
        local = {}
        for name, value in rows.items():
            padded = np.zeros((micro * per_micro_local,) + value.shape[1:], value.dtype)
            padded[:local_rows] = value
            local[name] = padded
        per_micro_fields: dict[str, np.ndarray] = {}
        if self.vision is not None:
            local, per_micro_fields = self._vision_fields(local, images, micro, per_micro_local)
        elif images is not None and len(images):
            raise ValueError(f"{len(images)} image(s) given to a text-only model; a policy that sees images has "
                             "a vl_cfg (gsjax.models.qwen3_vl.Qwen3VL)")
        out = {}
        for name, value in local.items():
            shape = (micro, per_micro) + value.shape[1:]
            mine = value.reshape((micro, per_micro_local) + value.shape[1:])
            out[name] = jax.make_array_from_process_local_data(self._row_sharding(shape), mine, shape)
        for name, value in per_micro_fields.items():
            shape = (micro, value.shape[1] * jax.process_count()) + value.shape[2:]
            out[name] = jax.make_array_from_process_local_data(self._patch_sharding(shape), value, shape)
        return out

    def abstract_batch(self, fields: Mapping[str, Any], micro: int, rows_per_micro: int, row_len: int,
                       patches: int = 0) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch `global_batch` would give, without data: per-row `fields` (name ->
        dtype) [micro, rows_per_micro, row_len]; with `patches` > 0 (a vision-language model) also
        the vision fields for a bucket of `patches` (all processes together) per micro-batch."""
        shapes = {k: ((micro, rows_per_micro, row_len), dt) for k, dt in fields.items()}
        micro_shapes = {}
        if patches:
            if self.vision is None:
                raise ValueError("patches > 0 needs a vision-language model (one with a vl_cfg)")
            for k, (trail, dt) in vision_batch.row_fields().items():
                shapes[k] = ((micro, rows_per_micro, row_len) + trail, dt)
            for k, (trail, dt) in vision_batch.micro_batch_fields(self.vision).items():
                micro_shapes[k] = ((micro, patches) + trail, dt)
        out = {k: jax.ShapeDtypeStruct(s, dt, sharding=self._row_sharding(s)) for k, (s, dt) in shapes.items()}
        out.update({k: jax.ShapeDtypeStruct(s, dt, sharding=self._patch_sharding(s)) for k, (s, dt) in micro_shapes.items()})
        return out

    # ------------------------------------------------------------------ the step

    def _accumulate(self, params, batch, aux):
        """(loss, metrics, grads) summed over the micro-batches of `batch` [M, R, L, ...] (frozen
        parameters' gradients are zeros, never computed)."""
        train, frozen = (params, None) if self._trainable is None else nnx.split_state(params, self._trainable, ...)

        def one(mb):
            def model_loss(p):
                return self.loss_fn(nnx.merge(self.graphdef, p if frozen is None else nnx.merge_state(p, frozen)), mb, aux)

            (loss, metrics), grads = jax.value_and_grad(model_loss, has_aux=True)(train)
            return loss, metrics, jax.tree.map(lambda g: g.astype(jnp.float32), grads)

        first = jax.tree.map(lambda x: x[0], batch)
        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, first))

        def body(acc, mb):
            out = jax.lax.cond(mb["loss_mask"].any(), one, lambda _: zero, mb)
            return jax.tree.map(jnp.add, acc, out), None

        (loss, metrics, grads), _ = jax.lax.scan(body, zero, batch)
        if frozen is not None:
            grads = nnx.merge_state(grads, jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), frozen))
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
            grad_norm = optax.tree.norm(grads)
            updates, new_opt_state = self.tx.update(grads, opt_state, params)
            # A non-finite loss or gradient leaves the parameters and the optimizer state as they were.
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            keep = partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
            new_params = keep(optax.apply_updates(params, updates), params)
            # The norm of the weights after the step: a checksum a resumed run must reproduce exactly.
            metrics = dict(metrics, loss=loss, grad_norm=grad_norm, param_norm=optax.tree.norm(new_params))
            return new_params, keep(new_opt_state, opt_state), metrics

        fn = jax.jit(update, donate_argnums=(0, 1),
                     in_shardings=(self.param_shardings, self.opt_shardings, batch_shardings, aux_shardings),
                     out_shardings=(self.param_shardings, self.opt_shardings, replicated))
        self._steps[key] = fn
        return fn

    def lower_update(self, fields: Mapping[str, Any], micro: int, rows_per_micro: int, row_len: int, aux: Any = None,
                     patches: int = 0):
        """The step lowered for a batch of `micro` micro-batches of `rows_per_micro` rows of
        `row_len` tokens (fields: name -> dtype; with `patches` > 0, images in a bucket of that many
        patches per micro-batch: `abstract_batch`), without data: `.compile()` it for its memory
        and cost analyses."""
        batch = self.abstract_batch(fields, micro, rows_per_micro, row_len, patches)
        with jax.set_mesh(self.mesh):
            return self._step_fn(batch, aux).lower(self.params, self.opt_state, batch, aux)

    def update(self, rows: Mapping[str, np.ndarray], aux: Any = None, images: RowImages | None = None,
               nonfinite: str = "raise") -> dict[str, float]:
        """One optimizer step on this process's packed rows (and their images); returns the
        step's metrics. A non-finite loss or gradient norm leaves the parameters and optimizer state
        as they were, and then raises FloatingPointError (`nonfinite="raise"`) or returns with
        `update_skipped` 1 (`"skip"`)."""
        batch = self.global_batch(rows, images)
        with jax.set_mesh(self.mesh):
            self.params, self.opt_state, metrics = self._step_fn(batch, aux)(self.params, self.opt_state, batch, aux)
        out = {k: float(v) for k, v in jax.device_get(metrics).items()}
        skipped = not (math.isfinite(out["loss"]) and math.isfinite(out["grad_norm"]))
        if skipped and nonfinite == "raise":
            raise FloatingPointError(f"the loss is {out['loss']} and the gradient norm {out['grad_norm']} "
                                     f"(not both finite); the update was not applied; metrics {out}")
        out["update_skipped"] = float(skipped)
        micro, rows = batch[SEGMENT_IDS].shape[:2]
        out.update(micro_batches=float(micro), batch_rows=float(rows))  # the compiled shape
        if vision_batch.PATCHES in batch:
            out["batch_patches"] = float(batch[vision_batch.PATCHES].shape[1])
        return out

    def loss_and_grads(self, rows: Mapping[str, np.ndarray], aux: Any = None, images: RowImages | None = None
                       ) -> tuple[float, Any]:
        """The loss and (float32) gradients the next `update` would apply, without applying them."""
        batch = self.global_batch(rows, images)
        with jax.set_mesh(self.mesh):
            loss, _, grads = jax.jit(self._accumulate)(self.params, batch, aux)
        return float(loss), grads
