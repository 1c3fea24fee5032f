"""The vision-language learner in its own process(es), run by tests/test_learner_vision.py.

    python tests/learner_vision_worker.py compare   # 8 simulated devices: meshes vs one device
    python tests/learner_vision_worker.py MESH_JSON # one process of several (launch/gpu_hosts.sh), or alone

`compare` prints one JSON line per mesh: the largest differences of the packed VL forward's logits
and of a micro-batched GRPO step's loss and gradients from one device's. With a mesh, process 0
prints the loss and gradient fingerprints (per parameter) of a GRPO step on each process's share
of the samples (whole groups per process, each with its own images), to compare with one process
holding them all.
"""

import os
import sys

if os.environ.get("GSJAX_TEST_DEVICES") or (len(sys.argv) > 1 and sys.argv[1] == "compare"):
    devices = os.environ.get("GSJAX_TEST_DEVICES", "8")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
                               " --xla_cpu_collective_call_terminate_timeout_seconds=60")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from vision_fixtures import samples, vl_config  # noqa: E402

from gsjax.data.vision_batch import model_input  # noqa: E402
from gsjax.models.qwen3_vl import Qwen3VL  # noqa: E402
from gsjax.parallel import initialize_distributed, is_primary, make_mesh, process_share  # noqa: E402
from gsjax.rl.trainer import GRPOConfig, GRPOTrainer, pack_samples, step_statistics  # noqa: E402

CFG = vl_config()
ROW_LEN = 96


def trainer(mesh, micro_batch_tokens: int) -> GRPOTrainer:
    return GRPOTrainer(Qwen3VL(CFG, rngs=nnx.Rngs(0)),
                       GRPOConfig(row_len=ROW_LEN, temperature=0.9, micro_batch_tokens=micro_batch_tokens), mesh=mesh)


def host(x) -> np.ndarray:
    return np.asarray(jax.device_get(multihost_utils.process_allgather(x, tiled=True)))


def packed_logits(t: GRPOTrainer, rows, images) -> np.ndarray:
    """Logits [rows, L, vocab] of the rows in one micro-batch (the trainer's mesh and shardings)."""
    batch = t.global_batch(rows, images)
    forward = jax.jit(lambda p, b: nnx.merge(t.graphdef, p)(model_input(jax.tree.map(lambda x: x[0], b))))
    with jax.set_mesh(t.mesh):
        return host(forward(t.params, batch))[: len(rows["tokens"])]


def grads(t: GRPOTrainer, rows, images) -> tuple[float, dict[str, np.ndarray]]:
    loss, g = t.loss_and_grads(rows, images=images)
    return loss, {"/".join(map(str, p)): host(v[...]) for p, v in nnx.to_flat_state(g)}


def compare() -> int:
    assert jax.device_count() == 8, jax.devices()
    s = samples(0, n=16)
    one = make_mesh({"data": 1}, jax.devices()[:1])
    ref_t = trainer(one, 0)
    rows, images = pack_samples(s, step_statistics(s, ref_t.cfg), ref_t.cfg)
    real = rows["segment_ids"] > 0
    ref_logits = packed_logits(ref_t, rows, images)
    ref_loss, ref_grads = grads(trainer(one, ROW_LEN), rows, images)
    for shape in [(2, 2, 2), (1, 1, 8)]:
        mesh = make_mesh(dict(zip(("data", "fsdp", "tp"), shape)))
        t = trainer(mesh, ROW_LEN)
        logits = packed_logits(trainer(mesh, 0), rows, images)
        loss, g = grads(t, rows, images)
        batch = t.global_batch(rows, images)
        print(json.dumps({
            "mesh": shape, "logits_err": float(np.abs(logits[real] - ref_logits[real]).max()),
            "logits_scale": float(np.abs(ref_logits[real]).max()), "loss": loss, "loss_err": abs(loss - ref_loss),
            "grad_err": max(float(np.abs(g[k] - ref_grads[k]).max()) for k in ref_grads),
            "vision_grad_max": max(float(np.abs(v).max()) for k, v in ref_grads.items() if k.startswith("visual")),
            "micro_batches": int(batch["tokens"].shape[0]), "patches": list(batch["patches"].shape),
            "patch_spec": str(batch["patches"].sharding.spec), "positions_spec": str(batch["positions"].sharding.spec),
        }), flush=True)
    return 0


def one_share(mesh_spec: dict) -> int:
    initialize_distributed()
    mesh = make_mesh(mesh_spec)
    t = trainer(mesh, ROW_LEN)
    everything = samples(0, n=16)
    mine = set(process_share(sorted({x.group for x in everything})))  # whole groups per process
    s = [x for x in everything if x.group in mine]
    rows, images = pack_samples(s, step_statistics(s, t.cfg), t.cfg)
    loss, g = grads(t, rows, images)
    def fingerprint(v: np.ndarray) -> list[float]:  # sum, |sum| and a fixed random projection
        return [float(v.sum()), float(np.abs(v).sum()), float(np.random.RandomState(v.size).randn(v.size) @ v.ravel())]

    out = {"processes": jax.process_count(), "devices": jax.device_count(), "loss": loss,
           "images_here": 0 if images is None else len(images), "grads": {k: fingerprint(v) for k, v in g.items()}}
    if is_primary():
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(compare() if sys.argv[1] == "compare" else one_share(json.loads(sys.argv[1])))
