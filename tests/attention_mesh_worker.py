"""Run as its own process.

`python attention_mesh_worker.py`: 8 simulated CPU devices; splash attention (interpret mode) on a
(data, fsdp, tp) = (2, 2, 2) mesh, forward and gradients, against the same call on one device.
`python attention_mesh_worker.py aot`: ahead-of-time compilation of splash attention (the Mosaic
kernel, not interpret mode) for the 4 chips of a v5p-8 at B=4, T=4096, H=32, KV=8, D=128, bf16,
forward and gradient, on a (data, fsdp, tp) = (1, 2, 2) mesh; needs libtpu, no TPU.
`python attention_mesh_worker.py segments`: the vision towers' blocked segment attention on a
(2, 2, 2) mesh (queries sharded over data x fsdp, heads over tp) against plain on one device,
forward and gradients, and the largest arrays of both compiled programs.
Prints one JSON line per case."""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=15"
)

import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

import gsjax.models.attention as attention  # noqa: E402
from gsjax.models.attention import (KV_AXES, PATCH_AXES, Q_AXES, _splash_specs, causal_attention,  # noqa: E402
                                    segment_attention)
from gsjax.parallel import logical_to_spec, make_mesh  # noqa: E402

B, T, D = 4, 256, 32
LOCAL_SHAPES = []  # q's shape as the kernel sees it, recorded at trace time
_kernel = attention._splash_local


def _recording(q, *args):
    LOCAL_SHAPES.append(list(q.shape))
    return _kernel(q, *args)


attention._splash_local = _recording
_blocked = attention._blocked_segments


def _recording_blocked(q, *args):
    LOCAL_SHAPES.append(list(q.shape))
    return _blocked(q, *args)


attention._blocked_segments = _recording_blocked


def inputs(h, kv):
    rs = np.random.RandomState(h * 10 + kv)
    q = rs.randn(B, T, h, D).astype(np.float32)
    k = rs.randn(B, T, kv, D).astype(np.float32)
    v = rs.randn(B, T, kv, D).astype(np.float32)
    seg = np.zeros((B, T), np.int32)
    for b, cuts in enumerate([(90, 200), (256,), (17, 40, 250), (128, 129)]):
        start = 0
        for i, end in enumerate(cuts):
            seg[b, start:end] = i + 1
            start = end
    w = rs.randn(B, T, h, D).astype(np.float32) * (seg != 0)[:, :, None, None]
    return q, k, v, seg, w


def loss(q, k, v, seg, w):
    return jnp.sum(causal_attention(q, k, v, seg, impl="splash") * w)


step = jax.jit(lambda q, k, v, seg, w: (causal_attention(q, k, v, seg, impl="splash"),
                                        jax.grad(loss, (0, 1, 2))(q, k, v, seg, w)))


def run(h, kv, mesh=None):
    q, k, v, seg, w = inputs(h, kv)
    if mesh is None:
        out, grads = step(q, k, v, seg, w)
        jax.block_until_ready((out, grads))
        return np.asarray(out), [np.asarray(g) for g in grads], seg, None
    shape = dict(mesh.shape)
    put = lambda x, axes: jax.device_put(x, NamedSharding(mesh, logical_to_spec(axes, x.shape, shape)))  # noqa: E731
    q, w = put(q, Q_AXES), put(w, Q_AXES)
    k, v = put(k, KV_AXES), put(v, KV_AXES)
    seg = put(seg, ("act_batch", "act_len"))
    with jax.set_mesh(mesh):
        LOCAL_SHAPES.clear()
        out, grads = step(q, k, v, seg, w)
        jax.block_until_ready((out, grads))
        hlo = step.lower(q, k, v, seg, w).as_text()
    specs = _splash_specs(q.shape, k.shape, shape)
    info = {"specs": [str(s) for s in specs], "kernel_q_shapes": LOCAL_SHAPES[:],
            "manual": "sdy.manual_computation" in hlo or "SPMDFullToShardShape" in hlo,
            "out_spec": str(out.sharding.spec)}
    return np.asarray(out), [np.asarray(g) for g in grads], np.asarray(seg), info


def aot():
    import time

    from jax.experimental import topologies

    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # beside other tests compiling for TPUs

    devices = topologies.get_topology_desc(
        platform="tpu", topology_name="v5:2x2x1", chip_config_name="megacore",
        chips_per_host_bounds=(2, 2, 1), num_slices=1,
    ).devices
    mesh = make_mesh({"data": 1, "fsdp": 2, "tp": 2}, list(devices))
    b, t, h, kv, d, block = 4, 4096, 32, 8, 128, 512
    shape = dict(mesh.shape)

    def abstract(dims, axes, dtype=jnp.bfloat16):
        return jax.ShapeDtypeStruct(dims, dtype, sharding=NamedSharding(mesh, logical_to_spec(axes, dims, shape)))

    q, k = abstract((b, t, h, d), Q_AXES), abstract((b, t, kv, d), KV_AXES)
    seg = abstract((b, t), ("act_batch", "act_len"), jnp.int32)
    fwd = lambda q, k, v, s: causal_attention(q, k, v, s, impl="splash", block=block)  # noqa: E731
    grad = jax.grad(lambda q, k, v, s: jnp.sum(fwd(q, k, v, s).astype(jnp.float32)), (0, 1, 2))
    for name, f in [("forward", fwd), ("gradient", grad)]:
        start = time.time()
        with jax.set_mesh(mesh):
            compiled = jax.jit(f).lower(q, k, k, seg).compile()
        mem = compiled.memory_analysis()
        print(json.dumps({
            "aot": name, "devices": [str(x) for x in devices], "mesh": shape,
            "shape": {"B": b, "T": t, "H": h, "KV": kv, "D": d, "block": block},
            "compile_s": round(time.time() - start, 2),
            "mosaic_kernels": compiled.as_text().count("tpu_custom_call"),
            "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
            "temp_bytes": mem.temp_size_in_bytes,
            "fp32_scores_bytes_per_chip": b * h * t * t * 4 // len(devices),
            "memory_analysis": str(mem),
        }), flush=True)


def square_shapes(hlo: str, size: int) -> list[str]:
    """The array shapes in `hlo` with two or more dimensions of at least `size`."""
    shapes = re.findall(r"\b(?:f32|bf16|f16|s32|pred)\[([\d,]+)\]", hlo)
    return sorted({s for s in shapes if sum(int(x) >= size for x in s.split(",")) >= 2})


def segments():
    p, h, d, block = 512, 4, 16, 32
    rs = np.random.RandomState(0)
    q, k, v, w = (rs.randn(p, h, d).astype(np.float32) for _ in range(4))
    # Two processes' blocks of 256 patches, each its images (lengths not multiples of the block)
    # then padding, the second's segments offset as gsjax.data.vision_batch offsets them.
    seg = np.zeros(p, np.int32)
    for start, cuts, offset in [(0, (70, 150, 230), 0), (256, (100, 101, 240), 256)]:
        for i, end in enumerate(cuts):
            seg[start + (cuts[i - 1] if i else 0):start + end] = offset + i + 1

    def step(impl):
        def loss(q, k, v, w):
            return jnp.sum(segment_attention(q, k, v, jnp.asarray(seg), impl=impl, block=block) * w)

        return jax.jit(lambda q, k, v, w: (segment_attention(q, k, v, jnp.asarray(seg), impl=impl, block=block),
                                           jax.grad(loss, (0, 1, 2))(q, k, v, w)))

    ref_out, ref_grads = step("plain")(q, k, v, w)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tp": 2})
    put = lambda x: jax.device_put(x, NamedSharding(mesh, logical_to_spec(PATCH_AXES, x.shape, dict(mesh.shape))))  # noqa: E731
    args = [put(x) for x in (q, k, v, w)]
    local = p // 4  # queries per device
    info = {}
    LOCAL_SHAPES.clear()
    for impl in ("plain", "blocked"):
        with jax.set_mesh(mesh):
            compiled = step(impl).lower(*args).compile()
            out, grads = compiled(*args)
            jax.block_until_ready((out, grads))
        info[impl] = {"square_shapes": square_shapes(compiled.as_text(), local),
                      "temp_bytes": compiled.memory_analysis().temp_size_in_bytes}
    print(json.dumps({
        "case": "segments", "patches": p, "queries_per_device": local, "q_spec": str(args[0].sharding.spec),
        "out_spec": str(out.sharding.spec), "local_q_shapes": LOCAL_SHAPES[:], **info,
        "out_err": float(np.abs(np.asarray(out) - np.asarray(ref_out)).max()),
        "grad_err": max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(grads, ref_grads)),
        "grad_scale": min(float(np.abs(np.asarray(g)).max()) for g in ref_grads),
    }), flush=True)


def main():
    if sys.argv[1:] == ["aot"]:
        return aot()
    if sys.argv[1:] == ["segments"]:
        return segments()
    assert len(jax.devices()) == 8, jax.devices()
    mesh = make_mesh({"data": 2, "fsdp": 2, "tp": 2})
    for h, kv in [(4, 2), (4, 1)]:
        ref_out, ref_grads, seg, _ = run(h, kv)
        out, grads, _, info = run(h, kv, mesh)
        valid = seg != 0
        print(json.dumps({
            "heads": [h, kv],
            **info,
            "out_err": float(np.abs(out - ref_out)[valid].max()),
            "grad_err": max(float(np.abs(a - b).max()) for a, b in zip(grads, ref_grads)),
            "grad_norm": float(sum(np.linalg.norm(g) for g in ref_grads)),
            "finite": bool(np.isfinite(out).all()),
        }), flush=True)


if __name__ == "__main__":
    main()
