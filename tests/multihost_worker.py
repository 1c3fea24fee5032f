"""The learner on synthetic data, as one of several processes or alone: prints one JSON line (process
0) with the SFT and GRPO steps' metrics and the updated parameters' fingerprint. Run by
tests/test_multihost.py as 1 process x 1 device and 2 x 4 (through launch/gpu_hosts.sh).

    python tests/multihost_worker.py MESH_JSON
"""

import json
import os
import sys

if os.environ.get("GSJAX_TEST_DEVICES"):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                               + os.environ["GSJAX_TEST_DEVICES"] + " --xla_cpu_collective_call_terminate_timeout_seconds=60")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from gsjax.models.qwen3 import Qwen3, tiny_config  # noqa: E402
from gsjax.parallel import initialize_distributed, is_primary, make_mesh, process_share  # noqa: E402
from gsjax.rl.trainer import GRPOConfig, GRPOTrainer, Sample  # noqa: E402
from gsjax.sft.data import Encoded, pack  # noqa: E402
from gsjax.sft.trainer import SFTConfig, SFTTrainer  # noqa: E402

CFG = tiny_config(vocab_size=97, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, tie_embeddings=False)


def samples(step: int) -> list[Sample]:
    """A step's 4 prompts x 4 samples, rewards varying within each group (one failed sample)."""
    rs = np.random.RandomState(step)
    out = []
    for i in range(16):
        n, prompt = int(rs.randint(24, 100)), int(rs.randint(4, 12))
        out.append(Sample(rs.randint(0, CFG.vocab_size, n).tolist(), [0] * prompt + [1] * (n - prompt),
                          (-rs.rand(n)).tolist(), [0] * prompt + [1] * (n - prompt), group=f"p{i // 4}",
                          reward=float(rs.rand()), failed=i == 6))
    return out


def fingerprint(params) -> float:
    return float(sum(float(np.abs(np.asarray(jax.device_get(jax.experimental.multihost_utils.process_allgather(x, tiled=True)))).sum())
                     for x in jax.tree.leaves(params)))


def main() -> int:
    initialize_distributed()
    mesh = make_mesh(json.loads(sys.argv[1]))
    out = {"processes": jax.process_count(), "devices": jax.device_count()}

    rs = np.random.RandomState(0)
    examples = [Encoded(rs.randint(0, CFG.vocab_size, n).tolist(), [0] * 5 + [1] * (n - 5))
                for n in rs.randint(20, 120, 24)]
    sft = SFTTrainer(Qwen3(CFG, rngs=nnx.Rngs(0)), SFTConfig(steps=4, lr=1e-2, micro_batch_tokens=128), mesh=mesh)
    batch = pack(examples, 128)
    rows = len(batch.tokens) - len(batch.tokens) % 8
    out["sft_loss"] = [sft.train_step(type(batch)(*(getattr(batch, f)[:rows] for f in ("tokens", "loss_mask", "segment_ids", "positions")))) for _ in range(3)]
    out["sft_params"] = fingerprint(sft.params)

    grpo = GRPOTrainer(Qwen3(CFG, rngs=nnx.Rngs(1)), GRPOConfig(lr=1e-2, temperature=0.9, row_len=128,
                                                                micro_batch_tokens=256), mesh=mesh)
    out["grpo"] = []
    for step in range(2):
        everything = samples(step)
        groups = sorted({s.group for s in everything})
        mine = set(process_share(groups))  # whole groups per process, as the rollouts split them
        m = grpo.step([s for s in everything if s.group in mine])
        out["grpo"].append({k: m[k] for k in ("loss", "grad_norm", "clip_frac", "approx_kl_old", "advantage_abs_mean")})
    out["grpo_params"] = fingerprint(grpo.params)
    if is_primary():
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
