"""The sharded Qwen-Image transformer and sampling loop equal one device: a separate process with
8 simulated CPU devices (tests/qwen_image_mesh_worker.py). Also the XLA partitioner bug that
`layers.compute_value` works around, kept visible (docs/qwen_image.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from subprocess_env import worker_env


@pytest.fixture(scope="module")
def results():
    env = worker_env()
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "qwen_image_mesh_worker.py")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {tuple(r["mesh"]) if "mesh" in r else "xla_bug": r for r in rows}


# (2, 2, 2) (batch over data x fsdp = 4 shards, tp = 2) needs layers.compute_value: without it the
# batch shards (0, 1) and (1, 0) of four rows came back swapped (4e-2).
GOOD = [(1, 1, 8), (1, 4, 2), (2, 2, 2)]


@pytest.mark.slow
@pytest.mark.parametrize("shape", GOOD)
def test_sharded_transformer_equals_one_device(results, shape):
    r = results[shape]
    assert r["out_std"] > 0.5
    assert r["max_abs_err"] <= 1e-5, r


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 1, 8), (2, 2, 2)])
def test_sharded_sampling_loop_equals_one_device(results, shape):
    assert results[shape]["sample_max_abs_err"] <= 1e-5, results[shape]


@pytest.mark.slow
def test_transformer_weights_really_are_sharded(results):
    assert results[(1, 1, 8)]["to_q_spec"] == "P(None, 'tp')"
    assert results[(1, 4, 2)]["img_mod_spec"] == "P('fsdp', 'tp')"
    assert results[(2, 2, 2)]["to_q_spec"] == "P('fsdp', 'tp')"


@pytest.mark.slow
def test_fsdp_sharded_weights_are_gathered_for_the_matmul(results):
    """Stored over (fsdp, tp), read by the matmul over tp only (layers.compute_value); untouched
    where no batch axis shards the weight."""
    assert results[(1, 4, 2)]["img_mod_used_spec"] == "P(None, 'tp')"
    assert results[(2, 2, 2)]["img_mod_used_spec"] == "P(None, 'tp')"
    assert results[(1, 1, 8)]["img_mod_used_spec"] == "P(None, 'tp')"


XLA_BUG = ("XLA's SPMD partitioner on the CPU backend (jax 0.10.2) swaps batch shards of a matmul whose weight is "
           "stored (tp, fsdp) when data > 1 and fsdp == tp; if this passes, the bug is fixed upstream and "
           "layers.compute_value may be dropped (docs/qwen_image.md)")


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=XLA_BUG)
def test_xla_partitioner_matmul_bug_reproduction(results):
    """Plain jax, no gsjax: rows 2-5 of a [8, 6, 64] x [64, 64] product are wrong on (2, 2, 2)."""
    assert results["xla_bug"]["repro_max_abs_err"] <= 1e-4, results["xla_bug"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=XLA_BUG)
def test_transformer_on_2x2x2_without_the_workaround(results):
    """The transformer with the weights' layout left to XLA (compute_value bypassed) still differs."""
    assert results["xla_bug"]["unguarded_2x2x2_max_abs_err"] <= 1e-5, results["xla_bug"]
