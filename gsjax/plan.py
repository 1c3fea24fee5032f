"""Will it fit? Every jitted program of a config, compiled ahead of time for a topology, measured.

    python -m gsjax.plan --config=configs/grpo.py:qwen3_8b --topology=v5p-16
    python -m gsjax.plan --config=configs/sft.py:qwen3_8b --topology=v6e-16
    python -m gsjax.plan --config=configs/grpo.py:qwen3_8b --topology=v5p-16 --generator   # Qwen-Image-Edit 20B
    python -m gsjax.plan --config=configs/grpo.py --topology=cpu:8                       # simulated CPU devices

For a Cloud TPU topology (libtpu installed: `pip install -e ".[tpu]"`; no TPU needed) or N
simulated CPU devices, the planner builds the config's mesh over the topology's chips, and lowers
and compiles, with abstract arrays only (nothing is allocated), the programs a run executes at the
config's real shapes:

- `rollout prefill` and `rollout decode`: the sampler's two programs (`SamplerPrograms`) on the
  rollout mesh (one host's block of the mesh: each process samples on its own chips), at
  `rl.num_slots` x `rl.cache_len` and the largest prefill bucket;
- `grpo update`: the GRPO learner step (`TrainState`) over the whole mesh, at the worst batch a step
  can bring (every trajectory of the step as long as a row), micro-batched by `rl.micro_batch_tokens`;
- `sft step`: the SFT step at `sft.rows_per_batch` x `sft.row_len`, micro-batched by
  `sft.micro_batch_tokens` (when the config trains SFT);
- for a vision-language policy both learner programs hold images (`LearnerImages`): every row one
  trajectory's most, `max_rounds - 1` tool responses of `images_per_response` images of
  `max_pixels` each, bucketed per micro-batch as `TrainState` buckets them (the note says how many);
  a row that packs several image-heavy trajectories brings more, in a larger bucket;
- with `--generator`: one Qwen-Image-Edit transformer forward with true CFG (batch 2) at the
  reference's ~1 MP output and 3 reference images, on the generator's own mesh (`--generator-mesh`).

It prints, per chip, from each compiled executable's memory analysis: parameters, optimizer state,
KV cache, batch and other inputs (read off the inputs' shardings), temporaries, and the total
(inputs + outputs - donated + temporaries), beside the chip's HBM, with "fits" or "does not fit";
then what stays resident during a GRPO step, phase by phase: the rollouts (learner state, sampler
weights, KV cache, the sampler's temporaries) and the update (learner state, its temporaries and
batch), the sampler's weights and cache being freed during the update (`rl.release_sampler`; off,
one phase holds everything with the largest temporaries). FLOPs per chip come from the compiled programs' cost analysis. XLA counts a
loop body once, so the scanned layers, micro-batches and decode chunk are counted by compiling the
same program with 1 and 2 unrolled layers, one micro-batch and one decode step, and scaling:
flops = f(1) + (L - 1) * (f(2) - f(1)), times the micro-batches that hold rows (or decode steps).
Decode and prefill FLOPs attend over the whole cache (the key blocks a step skips are counted). The implied time is
flops / (peak bf16 FLOP/s x `--mfu`); decode is bound by HBM bandwidth, not FLOPs, so its implied
time is a lower bound. The exit status is 1 when any program, or the resident total, does not fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int  # per chip
    peak_flops: float  # bf16 FLOP/s per chip


# Public figures per chip (Cloud TPU docs); the HBM as the TPU compiler reports it available.
CHIPS = {
    "v5p": Chip("TPU v5p", int(95.74 * GiB), 459e12),
    "v6e": Chip("TPU v6e (Trillium)", int(31.25 * GiB), 918e12),
    "v5e": Chip("TPU v5e", int(15.75 * GiB), 197e12),
    "v4": Chip("TPU v4", 32 * GiB, 275e12),
    "cpu": Chip("simulated CPU device", 0, 0.0),  # no HBM limit: memory figures only
}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    chip: Chip
    topology_name: str  # jax.experimental.topologies' name ("" for cpu)
    chip_config: str
    chips: int


def _tpu(prefix: str, chip: str, config: str, shapes: dict[int, str], per_core: bool) -> dict[str, Topology]:
    out = {}
    for n, shape in shapes.items():
        chips = math.prod(int(x) for x in shape.split("x"))
        out[f"{prefix}-{n}"] = Topology(f"{prefix}-{n}", CHIPS[chip], f"{chip if chip != 'v5p' else 'v5'}:{shape}",
                                        config, chips)
        assert chips == (n // 2 if per_core else n), (prefix, n, shape)
    return out


# Names count TensorCores for v5p and v4 (2 per chip, megacore) and chips for v5e / v6e (MaxText's
# accelerator_to_spec_map uses the same names and topologies).
TOPOLOGIES: dict[str, Topology] = {
    **_tpu("v5p", "v5p", "megacore", {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4"}, True),
    **_tpu("v4", "v4", "megacore", {8: "2x2x1", 16: "2x2x2", 32: "2x2x4"}, True),
    **_tpu("v6e", "v6e", "default", {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
           False),
    **_tpu("v5e", "v5e", "default", {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 256: "16x16"}, False),
}
CHIPS_PER_HOST = (2, 2, 1)  # a Cloud TPU VM host holds 4 chips


def parse_topology(name: str) -> Topology:
    if name.startswith("cpu:"):
        n = int(name.split(":", 1)[1])
        return Topology(name, CHIPS["cpu"], "", "", n)
    if name not in TOPOLOGIES:
        raise SystemExit(f"error: unknown --topology {name!r}; expected cpu:N or one of {', '.join(TOPOLOGIES)}")
    return TOPOLOGIES[name]


def prepare_environment(topology: Topology) -> None:
    """Before jax is imported: simulated devices for cpu:N; for TPU, the CPU backend (the topology
    is only compiled for) and libtpu's start-up variables."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if topology.chip.name.startswith("simulated"):
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={topology.chips}"
    else:
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.name)
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def topology_devices(topology: Topology) -> list:
    import jax

    if not topology.topology_name:
        devices = jax.devices()
        if len(devices) < topology.chips:
            raise SystemExit(f"error: {topology.name} needs {topology.chips} CPU devices but jax has {len(devices)} "
                             "(XLA_FLAGS was set after jax started; run the planner in its own process)")
        return devices[: topology.chips]
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise SystemExit('error: compiling for a TPU topology needs libtpu: pip install -e ".[tpu]"') from None
    from jax.experimental import topologies

    # Compiling ahead of time claims no chip: let two planners (or a planner beside a test) load
    # libtpu at once instead of failing on its single-process lock file.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    bounds = CHIPS_PER_HOST if topology.chips >= 4 else (1, 1, 1)
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.topology_name,
                                        chip_config_name=topology.chip_config, chips_per_host_bounds=bounds,
                                        num_slices=1)
    return list(desc.devices)


# ----------------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class Measured:
    name: str
    mesh: dict[str, int]
    roles: dict[str, int]  # per-chip bytes of the inputs by role (parameters, optimizer, KV cache, ...)
    arguments: int
    outputs: int
    aliased: int
    temp: int
    code: int
    flops: float | None = None  # per chip and call
    note: str = ""
    compile_s: float = 0.0
    shardings: dict[str, str] = dataclasses.field(default_factory=dict)  # input role -> PartitionSpec
    refused: bool = False  # the compiler refused it for lack of HBM (temp: what it said it needs)
    largest: list[str] = dataclasses.field(default_factory=list)  # the largest array shapes in the program

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temp + self.code


def per_chip_bytes(tree: Any) -> int:
    """Bytes one device holds of the abstract arrays in `tree` (by their shardings)."""
    import jax
    import numpy as np

    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += int(np.prod(shape)) * np.dtype(x.dtype).itemsize
    return total


def measure(name: str, lowered, mesh, roles: dict[str, int], note: str = "",
            shardings: dict[str, str] | None = None) -> Measured:
    import jax

    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler refuses a program whose temporaries exceed the HBM, naming what it needs.
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        found = re.search(r"temporaries \(([\d.]+)([KMGT])\)", str(e))
        temp = int(float(found.group(1)) * 1024 ** "KMGT".index(found.group(2)) * 1024) if found else 0
        print(f"  {name}: the compiler refused it ({str(e).splitlines()[0][:200]})", file=sys.stderr, flush=True)
        return Measured(name, dict(mesh.shape), roles, sum(roles.values()), 0, 0, temp, 0,
                        note=f"{note}; refused by the compiler: {str(e).splitlines()[0][:160]}",
                        compile_s=time.perf_counter() - start, shardings=shardings or {}, refused=True)
    m = compiled.memory_analysis()
    print(f"  compiled {name} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return Measured(name, dict(mesh.shape), roles, m.argument_size_in_bytes, m.output_size_in_bytes,
                    m.alias_size_in_bytes, m.temp_size_in_bytes, m.generated_code_size_in_bytes, note=note,
                    compile_s=time.perf_counter() - start, shardings=shardings or {},
                    largest=largest_arrays(compiled.as_text()))


_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
             "f64": 8, "s64": 8, "u64": 8}


def largest_arrays(hlo: str, most: int = 8) -> list[str]:
    """The `most` largest array shapes (per device) written in a compiled program's HLO text, largest
    first, as "f32[4,512,512]": where a program's temporaries go (a [B, T, V] or [P, P] array shows
    here)."""
    sizes = {}
    for dtype, dims in re.findall(r"\b(" + "|".join(_ITEMSIZE) + r")\[([\d,]+)\]", hlo):
        sizes[f"{dtype}[{dims}]"] = math.prod(int(d) for d in dims.split(",")) * _ITEMSIZE[dtype]
    return sorted(sizes, key=lambda k: -sizes[k])[:most]


def flops_of(lowered) -> float:
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def extrapolated_flops(build: Callable[[int], Any], layers: int) -> float | None:
    """FLOPs of a program with `layers` layers from the same program built with 1 and 2 unrolled
    layers (XLA's cost analysis counts a loop body once); None when the compiler refuses those."""
    import jax

    try:
        one = flops_of(build(1))
        return one if layers == 1 else one + (layers - 1) * (flops_of(build(2)) - one)
    except jax.errors.JaxRuntimeError:
        return None


def scaled(flops: float | None, times: int) -> float | None:
    return None if flops is None else flops * times


# ----------------------------------------------------------------------------------- the programs


def model_config(cfg) -> Any:
    """The config's policy architecture with its run settings: a checkpoint folder's config.json,
    a named architecture (`model.architecture`), or `model.tiny`."""
    from gsjax.models import hf_io
    from gsjax.models.qwen3 import Qwen3Config
    from gsjax.train import run_settings

    run = run_settings(cfg)
    if cfg.model.path:
        return hf_io.load_config(cfg.model.path, **run)
    if cfg.model.architecture:
        if cfg.model.architecture not in hf_io.ARCHITECTURES:
            raise SystemExit(f"error: model.architecture {cfg.model.architecture!r}; expected one of "
                             f"{sorted(hf_io.ARCHITECTURES)}")
        return hf_io.with_run(hf_io.ARCHITECTURES[cfg.model.architecture], **run)
    return hf_io.with_run(Qwen3Config(**cfg.model.tiny.to_dict()), **run)


def abstract_model(model_cfg):
    from flax import nnx

    from gsjax.models.hf_io import build_model

    return nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0)))


def rollout_mesh(mesh):
    """The block of the mesh on the first host's chips (where process 0 samples)."""
    from gsjax.parallel import process_mesh

    return process_mesh(mesh, process=0)


def plan_rollout(cfg, model_cfg, mesh, with_flops: bool) -> list[Measured]:
    import jax
    from flax import nnx

    from gsjax.sampling import SamplingParams
    from gsjax.sampling.sampler import PREFILL_BUCKETS, SamplerPrograms

    r = cfg.rl
    local = rollout_mesh(mesh)
    chunk = 16

    def programs(mcfg, decode_chunk=chunk):
        graphdef, state = nnx.split(abstract_model(mcfg))
        p = SamplerPrograms(graphdef, state, local, params=SamplingParams(r.temperature, r.top_p, r.top_k),
                            stop_token_ids=(0,), num_slots=r.num_slots, cache_len=r.cache_len, chunk=decode_chunk)
        return p, p.abstract_weights(state)

    p, weights = programs(model_cfg)
    rows, length = r.num_slots, PREFILL_BUCKETS[-1]
    with p.context():
        prefill = p.jitted_prefill.lower(weights, *p.abstract_prefill_inputs(rows, length))
        decode = p.jitted_decode.lower(weights, *p.abstract_decode_inputs())
    roles = {"sampler weights": per_chip_bytes(weights), "KV cache": per_chip_bytes(p.abstract_cache())}
    specs = {"KV cache": str(p.cache_sharding.k.spec)}
    out = [measure("rollout prefill", prefill, local, roles, f"{rows} rows x {length} tokens", specs),
           measure("rollout decode", decode, local, roles, f"{r.num_slots} slots x {chunk} steps", specs)]
    vision = []
    if p.vl_cfg is not None:  # one tool response's images: encoded once, then prefilled
        patches, merged = response_patches(cfg, p.vl_cfg)
        with p.context():
            encode = p.jitted_encode.lower(weights, *p.abstract_encode_inputs(patches))
            prefill_vision = p.jitted_prefill_vision.lower(weights, *p.abstract_prefill_vision_inputs(length, merged))
        images = cfg.agent.limits.images_per_response
        tower = {"tower weights": per_chip_bytes(weights["visual"])}  # all the encoder takes
        vision = [measure("rollout image encode", encode, local, tower,
                          f"{images} images of <= {cfg.agent.limits.max_pixels:,} pixels: {patches} patches", specs),
                  measure("rollout prefill (images)", prefill_vision, local, roles,
                          f"1 row x {length} tokens, {merged} image tokens", specs)]
    if with_flops and not any(m.refused for m in out + vision):
        def lowered(kind, layers):
            small = with_layers(model_cfg, layers)
            q, w = programs(small, decode_chunk=1)
            with q.context():
                if kind == "prefill":
                    return q.jitted_prefill.lower(w, *q.abstract_prefill_inputs(rows, length))
                if kind == "prefill_vision":
                    return q.jitted_prefill_vision.lower(w, *q.abstract_prefill_vision_inputs(length, merged))
                return q.jitted_decode.lower(w, *q.abstract_decode_inputs())

        layers = decoder(model_cfg).num_layers
        out[0].flops = extrapolated_flops(lambda n: lowered("prefill", n), layers)
        out[1].flops = scaled(extrapolated_flops(lambda n: lowered("decode", n), layers), chunk)
        if vision:
            vision[0].flops = flops_of(encode)  # the tower's blocks run as a Python loop: all counted
            vision[1].flops = extrapolated_flops(lambda n: lowered("prefill_vision", n), layers)
    del jax
    return out + vision


def decoder(model_cfg):
    """The decoder's config (a vision-language config holds it as `text`)."""
    return getattr(model_cfg, "text", model_cfg)


def with_layers(model_cfg, layers: int):
    """`model_cfg` with `layers` unscanned decoder layers (for FLOPs by extrapolation)."""
    small = dataclasses.replace(decoder(model_cfg), num_layers=layers, scan_layers=False, cache_block=0)
    return dataclasses.replace(model_cfg, text=small) if hasattr(model_cfg, "text") else small


def image_patches(cfg, vl_cfg) -> int:
    """Patches of one image at its most: sides multiples of the processor's factor within
    `max_pixels` (as `fit_pixels` and the processor size a tool image), the most patches of any
    such shape (160,000 pixels at factor 32: 416 x 384, 26 x 24 = 624 patches; a square gets 576)."""
    from gsjax.agent.vision import PolicyImages

    processor = PolicyImages.for_tower(vl_cfg.vision, cfg.agent.limits.max_pixels).processor
    factor, cap = processor.factor, min(cfg.agent.limits.max_pixels, processor.max_pixels)
    area = max((h * (cap // h // factor * factor) for h in range(factor, cap // factor + 1, factor)), default=0)
    if area < factor * factor:
        raise SystemExit(f"error: agent.limits.max_pixels={cfg.agent.limits.max_pixels} holds no "
                         f"{factor} x {factor} image")
    return area // vl_cfg.vision.patch_size ** 2


def response_patches(cfg, vl_cfg) -> tuple[int, int]:
    """Patches (bucketed as the sampler buckets them) and merged image tokens of one tool response
    at its most: `images_per_response` images of at most `max_pixels` pixels."""
    from gsjax.train_state import next_pow2

    total = image_patches(cfg, vl_cfg) * cfg.agent.limits.images_per_response
    return next_pow2(total), next_pow2(total) // vl_cfg.vision.spatial_merge_size ** 2


@dataclasses.dataclass(frozen=True)
class LearnerImages:
    """The images the planner puts in each learner micro-batch: every row holds one trajectory's
    most (each of its `max_rounds - 1` tool responses with `images_per_response` images of
    `max_pixels`), bucketed per process as `TrainState` buckets them."""

    per_row: int  # images
    per_image: int  # patches
    rows: int  # rows per micro-batch (all processes)
    processes: int
    bucket: int  # patches per micro-batch (all processes): the program's P

    @property
    def patches(self) -> int:
        return self.rows * self.per_row * self.per_image

    def note(self) -> str:
        return (f"{self.per_row} images per row (one trajectory at its most) x {self.per_image} patches: "
                f"{self.patches:,} patches per micro-batch, bucketed to {self.bucket:,}")


def learner_images(cfg, vl_cfg, trainer, rows_per_micro: int, row_len: int) -> LearnerImages:
    """What `LearnerImages` says, for `trainer`'s mesh (its devices' processes: one per host)."""
    from gsjax.agent.protocol import AgentLimits
    from gsjax.data.vision_batch import bucket

    limits = AgentLimits(**cfg.agent.limits)
    per_row, per_image = limits.max_tool_calls * limits.images_per_response, image_patches(cfg, vl_cfg)
    tokens = per_row * per_image // vl_cfg.vision.merge_unit
    if tokens > row_len:
        raise SystemExit(f"error: {per_row} images of {per_image} patches are {tokens} image tokens, more than a "
                         f"learner row of {row_len}")
    processes = len({d.process_index for d in trainer.mesh.devices.flat})
    unit = math.lcm(vl_cfg.vision.merge_unit, max(1, trainer.batch_shards // processes))  # TrainState.patch_unit
    per_process = bucket(-(-rows_per_micro // processes) * per_row * per_image, unit)
    return LearnerImages(per_row, per_image, rows_per_micro, processes, per_process * processes)


def _learner_roles(trainer, batch_bytes: int) -> dict[str, int]:
    return {"parameters": per_chip_bytes(trainer.params), "optimizer": per_chip_bytes(trainer.opt_state),
            "batch": batch_bytes}


def plan_learner(name: str, make_trainer: Callable[[Any], Any], fields: dict, rows: int, row_len: int,
                 micro_tokens: int, model_cfg, mesh, with_flops: bool, aux: bool = False, cfg=None) -> Measured:
    """`rows` rows of `row_len` tokens (the worst batch), in micro-batches of `micro_tokens` per
    device (0: one micro-batch). A vision-language policy's rows hold images (`learner_images` of
    `cfg`, when the agent shows it any)."""
    from gsjax.train_state import next_pow2

    trainer = make_trainer(model_cfg)
    shards = trainer.batch_shards
    per_micro = (max(1, micro_tokens // row_len) if micro_tokens else next_pow2(math.ceil(rows / shards))) * shards
    micro = next_pow2(math.ceil(rows / per_micro))
    ref = trainer.params if aux else None
    images = None
    if trainer.vision is not None and cfg is not None and cfg.agent.limits.images_per_response:
        images = learner_images(cfg, trainer.vision, trainer, per_micro, row_len)
    patches = images.bucket if images else 0
    lowered = trainer.lower_update(fields, micro, per_micro, row_len, ref, patches)
    batch = trainer.abstract_batch(fields, micro, per_micro, row_len, patches)
    roles = _learner_roles(trainer, per_chip_bytes(batch))
    if aux:
        roles["frozen reference"] = per_chip_bytes(ref)
    note = f"{micro} micro-batches x {per_micro} rows x {row_len} tokens" + (f"; {images.note()}" if images else "")
    specs = {"batch": str(batch["segment_ids"].sharding.spec)}
    if images:
        specs["patches"] = str(batch["patches"].sharding.spec)
    m = measure(name, lowered, mesh, roles, note, specs)
    if with_flops and not m.refused:
        def small(layers):
            t = make_trainer(with_layers(model_cfg, layers))
            return t.lower_update(fields, 1, per_micro, row_len, t.params if aux else None, patches)

        # Micro-batches past the batch's rows are all padding and skipped (lax.cond): not counted.
        m.flops = scaled(extrapolated_flops(small, decoder(model_cfg).num_layers), math.ceil(rows / per_micro))
    return m


def plan_grpo(cfg, model_cfg, mesh, with_flops: bool) -> Measured:
    import numpy as np

    from gsjax.rl.grpo import LossConfig
    from gsjax.rl.trainer import ROW_FIELDS, GRPOConfig, GRPOTrainer
    from gsjax.train import learner_row_len

    r = cfg.rl
    grpo = GRPOConfig(lr=r.lr, temperature=r.temperature, row_len=learner_row_len(cfg),
                      micro_batch_tokens=r.micro_batch_tokens, vocab_chunk=r.vocab_chunk,
                      loss=LossConfig(clip_low=r.clip_low, clip_high=r.clip_high, dual_clip=r.dual_clip or None,
                                      kl_coef=r.kl_coef, agg=r.loss_agg), train_vision=r.train_vision)
    fields = {**ROW_FIELDS, "segment_ids": np.int32, "positions": np.int32}
    trajectories = r.prompts_per_step * r.group_size
    return plan_learner("grpo update", lambda m: GRPOTrainer(abstract_model(m), grpo, mesh=mesh), fields,
                        trajectories, grpo.row_len, r.micro_batch_tokens, model_cfg, mesh, with_flops,
                        aux=bool(r.kl_coef), cfg=cfg)


def plan_sft(cfg, model_cfg, mesh, with_flops: bool) -> Measured:
    import numpy as np

    from gsjax.sft.trainer import SFTConfig, SFTTrainer

    s = cfg.sft
    sft = SFTConfig(steps=max(s.steps, 1), lr=s.lr, micro_batch_tokens=s.micro_batch_tokens, vocab_chunk=s.vocab_chunk,
                    train_vision=s.train_vision)
    fields = {"tokens": np.int32, "loss_mask": np.float32, "segment_ids": np.int32, "positions": np.int32,
              "mean_weights": np.float32}
    return plan_learner("sft step", lambda m: SFTTrainer(abstract_model(m), sft, mesh=mesh), fields,
                        s.rows_per_batch, s.row_len, s.micro_batch_tokens, model_cfg, mesh, with_flops, cfg=cfg)


def plan_generator(devices, mesh_spec: dict, with_flops: bool) -> Measured:
    """One Qwen-Image-Edit 20B transformer forward with true CFG (cond and negative as a batch of 2)
    at 1024x1024 (64x64 packed patches) with 3 references of the same size and 256 text tokens, bf16."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding

    from gsjax.models.qwen_image import QWEN_IMAGE_20B, QwenImageTransformer
    from gsjax.parallel import logical_to_spec, make_mesh, state_shardings

    mesh = make_mesh(mesh_spec, devices)
    shapes = ((1, 64, 64),) * 4  # the noisy latents, then 3 references
    tokens, text = sum(f * h * w for f, h, w in shapes), 256

    def lowered(cfg):
        model = nnx.eval_shape(lambda: QwenImageTransformer(cfg, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(model)
        shardings = state_shardings(state, mesh)
        weights = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)

        def arr(shape, dtype, axes):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, logical_to_spec(axes, shape, dict(mesh.shape))))

        args = (arr((2, tokens, cfg.in_channels), jnp.bfloat16, ("act_batch", "act_len", None)),
                arr((2, text, cfg.joint_attention_dim), jnp.bfloat16, ("act_batch", "act_len", None)),
                arr((2, text), jnp.bool_, ("act_batch", "act_len")), arr((2,), jnp.float32, ("act_batch",)))
        fn = jax.jit(lambda w, *a: nnx.merge(graphdef, w)(*a, shapes))
        with jax.set_mesh(mesh):
            return fn.lower(weights, *args), weights

    cfg = dataclasses.replace(QWEN_IMAGE_20B, dtype="bfloat16", param_dtype="bfloat16")
    low, weights = lowered(cfg)
    m = measure("generator forward", low, mesh, {"parameters": per_chip_bytes(weights)},
                f"Qwen-Image-Edit 20B, CFG batch 2, {tokens} image + {text} text tokens")
    if with_flops and not m.refused:
        m.flops = flops_of(low)  # no loops: the cost analysis counts every layer
    return m


# ----------------------------------------------------------------------------------- report


def fmt_gib(n: int) -> str:
    return f"{n / GiB:.2f}" if n >= GiB / 10 or n == 0 else f"{n / GiB:.2g}"


def report(topology: Topology, mesh_shape: dict, measured: Sequence[Measured], resident: dict[str, int] | None,
           mfu: float) -> tuple[str, bool]:
    chip = topology.chip
    hbm = chip.hbm_bytes
    lines = [f"{topology.name}: {topology.chips} x {chip.name}"
             + (f", {fmt_gib(hbm)} GiB HBM and {chip.peak_flops / 1e12:.0f} TFLOP/s bf16 each" if hbm else "")
             + f"; mesh {mesh_shape}", "",
             f"{'program':<24} {'mesh':<10} {'inputs by role (GiB per chip)':<58} {'temp':>7} {'total':>7} "
             f"{'HBM':>7}  {'fits?':<12} {'FLOP':>9} {'time @' + format(mfu, '.0%') + ' MFU':>14}"]
    ok = True
    for m in measured:
        roles = ", ".join(f"{k} {fmt_gib(v)}" for k, v in m.roles.items())
        fits = (m.total <= hbm and not m.refused) if hbm else None
        ok &= fits is not False
        verdict = "-" if fits is None else ("fits" if fits else "DOES NOT FIT")
        mesh = "x".join(str(v) for v in m.mesh.values())
        tflop = f"{m.flops:.3g}" if m.flops is not None else "-"
        time = (f"{m.flops / (chip.peak_flops * mfu) * 1e3:.1f} ms" if m.flops is not None and chip.peak_flops else "-")
        lines.append(f"{m.name:<24} {mesh:<10} {roles:<58} {fmt_gib(m.temp):>7} {fmt_gib(m.total):>7} "
                     f"{fmt_gib(hbm) if hbm else '-':>7}  {verdict:<12} {tflop:>9} {time:>14}")
        lines.append(f"{'':<24} {m.note}")
    if resident:
        total = max(sum(phase.values()) for phase in resident.values())
        fits = total <= hbm if hbm else None
        ok &= fits is not False
        verdict = "-" if fits is None else ("fits" if fits else "DOES NOT FIT")
        lines += ["", f"resident during a GRPO step (per chip, the largest phase): {fmt_gib(total)} GiB of "
                      f"{fmt_gib(hbm) if hbm else '-'}: {verdict}"]
        for name, phase in resident.items():
            parts = ", ".join(f"{k} {fmt_gib(v)}" for k, v in phase.items())
            lines.append(f"  {name}: {parts} = {fmt_gib(sum(phase.values()))}")
    lines.append("")
    lines.append("memory: each compiled executable's memory_analysis(); FLOPs: cost_analysis(), loops scaled "
                 "(see gsjax/plan.py); decode time is a lower bound (bandwidth-bound)")
    return "\n".join(lines), ok


def resident_bytes(measured: Sequence[Measured], release: bool = True) -> dict[str, dict[str, int]] | None:
    """What a GRPO process holds at once, per phase of a step. With `release` (`rl.release_sampler`,
    the default) the sampler's weights and KV cache are freed after the rollouts and placed again
    before the next ones, so the rollout phase holds the learner state, the sampler's weights and
    cache and the sampler's temporaries, and the update phase the learner state and the update's
    temporaries and batch; without it one phase holds all of them with the largest temporaries."""
    by = {m.name: m for m in measured}
    if "grpo update" not in by or "rollout decode" not in by:
        return None
    upd, dec, pre = by["grpo update"], by["rollout decode"], by["rollout prefill"]
    learner = {"parameters": upd.roles["parameters"], "optimizer": upd.roles["optimizer"]}
    if "frozen reference" in upd.roles:
        learner["frozen reference"] = upd.roles["frozen reference"]
    sampler = {"sampler weights": dec.roles["sampler weights"], "KV cache": dec.roles["KV cache"]}
    if not release:
        return {"step": learner | sampler | {"largest temporaries": max(upd.temp + upd.roles["batch"], dec.temp,
                                                                         pre.temp)}}
    return {"rollout": learner | sampler | {"temporaries": max(dec.temp, pre.temp)},
            "update": learner | {"temporaries and batch": upd.temp + upd.roles["batch"]}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gsjax.plan", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__ + "\nEvery other argument is the config's: --config=configs/NAME.py[:preset] "
                                     "and --config.KEY=VALUE (`python -m gsjax.train --config=... --help` lists the keys).")
    parser.add_argument("--topology", required=True, help="cpu:N, or a Cloud TPU name (v5p-16, v6e-8, ...)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilisation for the implied step times")
    parser.add_argument("--programs", default="all", help="comma-separated: rollout, grpo, sft (default all the config runs)")
    parser.add_argument("--generator", action="store_true", help="plan the Qwen-Image-Edit generator instead")
    parser.add_argument("--generator-mesh", default="data=1,fsdp=1,tp=-1", help="the generator's mesh")
    parser.add_argument("--no-flops", action="store_true", help="memory only (skips the small compiles for FLOPs)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args, config_args = parser.parse_known_args(argv)
    topology = parse_topology(args.topology)
    prepare_environment(topology)

    from gsjax import config as config_lib
    from gsjax.parallel import make_mesh

    cfg = config_lib.cli(config_args, "configs/grpo.py")
    devices = topology_devices(topology)
    with_flops = not args.no_flops
    if args.generator:
        spec = {k: int(v) for k, v in (p.split("=") for p in args.generator_mesh.split(","))}
        measured = [plan_generator(devices, spec, with_flops)]
        text, ok = report(topology, measured[0].mesh, measured, None, args.mfu)
        print(text)
        write_json(args.json, topology, measured, None, ok)
        return 0 if ok else 1
    mesh = make_mesh(cfg.mesh.to_dict(), devices)
    model_cfg = model_config(cfg)
    wanted = {"rollout", "grpo", "sft"} if args.programs == "all" else set(args.programs.split(","))
    unknown = wanted - {"rollout", "grpo", "sft"}
    if unknown:
        raise SystemExit(f"error: --programs {sorted(unknown)}; expected rollout, grpo, sft")
    dec = decoder(model_cfg)
    tower = (f", vision tower {model_cfg.vision.num_params() / 1e9:.2f} B with {model_cfg.vision.attention} attention"
             f" (block {model_cfg.vision.attention_block})" if dec is not model_cfg else "")
    print(f"model: {model_cfg.num_params() / 1e9:.2f} B parameters ({dec.num_layers} layers, "
          f"d={dec.hidden_size}, vocab {dec.vocab_size}{tower}), params {dec.param_dtype}, "
          f"compute {dec.dtype}, scan_layers={dec.scan_layers}, remat={dec.remat}, "
          f"attention={dec.attention}", flush=True)
    measured: list[Measured] = []
    if cfg.rl.steps > 0 and "rollout" in wanted:
        measured += plan_rollout(cfg, model_cfg, mesh, with_flops)
    if cfg.rl.steps > 0 and "grpo" in wanted:
        measured.append(plan_grpo(cfg, model_cfg, mesh, with_flops))
    if cfg.sft.steps > 0 and "sft" in wanted:
        measured.append(plan_sft(cfg, model_cfg, mesh, with_flops))
    if not measured:
        raise SystemExit("error: the config runs none of the programs asked for (rl.steps and sft.steps are 0?)")
    resident = resident_bytes(measured, cfg.rl.release_sampler)
    text, ok = report(topology, dict(mesh.shape), measured, resident, args.mfu)
    print(text)
    write_json(args.json, topology, measured, resident, ok)
    return 0 if ok else 1


def write_json(path: str, topology: Topology, measured: Sequence[Measured], resident: dict | None, ok: bool) -> None:
    if not path:
        return
    doc = {"topology": topology.name, "chips": topology.chips, "hbm_bytes": topology.chip.hbm_bytes, "fits": ok,
           "programs": [dict(dataclasses.asdict(m), total=m.total) for m in measured], "resident": resident}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
