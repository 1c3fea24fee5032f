"""Run as its own process.

`python attention_mesh_worker.py`: 8 simulated CPU devices; splash attention (interpret mode) on a
(data, fsdp, tp) = (2, 2, 2) mesh, forward and gradients, against the same call on one device.
`python attention_mesh_worker.py aot`: ahead-of-time compilation of splash attention (the Mosaic
kernel, not interpret mode) for the 4 chips of a v5p-8 at B=4, T=4096, H=32, KV=8, D=128, bf16,
forward and gradient, on a (data, fsdp, tp) = (1, 2, 2) mesh; needs libtpu, no TPU.
Prints one JSON line per case."""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=15"
)

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

import gsjax.models.attention as attention  # noqa: E402
from gsjax.models.attention import KV_AXES, Q_AXES, _splash_specs, causal_attention  # noqa: E402
from gsjax.parallel import logical_to_spec, make_mesh  # noqa: E402

B, T, D = 4, 256, 32
LOCAL_SHAPES = []  # q's shape as the kernel sees it, recorded at trace time
_kernel = attention._splash_local


def _recording(q, *args):
    LOCAL_SHAPES.append(list(q.shape))
    return _kernel(q, *args)


attention._splash_local = _recording


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


def main():
    if sys.argv[1:] == ["aot"]:
        return aot()
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
