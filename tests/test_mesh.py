"""Sharded training math equals one device: run in a separate process with 8 CPU devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jax.sharding import PartitionSpec as P

from gsjax.parallel import logical_to_spec, mesh_shape
from subprocess_env import worker_env


@pytest.fixture(scope="module")
def mesh_results():
    env = worker_env()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "mesh_worker.py")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    results = {}
    for r in rows:
        if "mesh" in r:
            results[tuple(r["mesh"])] = r
        elif "sampling_mesh" in r:
            results[("sampling",) + tuple(r["sampling_mesh"])] = r
        else:
            results["export"] = r
    return results


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 1, 8)])
def test_forward_backward_on_mesh_equals_one_device(mesh_results, shape):
    r = mesh_results[shape]
    assert r["grad_norm"] > 0.1  # the gradients being compared are not trivially zero
    assert r["loss_err"] <= 1e-5, r
    assert r["grad_err"] <= 1e-5, r


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 1, 8)])
def test_greedy_sampling_on_mesh_equals_one_device(mesh_results, shape):
    assert mesh_results[("sampling",) + shape]["same_tokens"] is True


def test_sharded_model_exports_and_loads_back_onto_a_mesh(mesh_results):
    assert mesh_results["export"]["export_from_mesh_same"] is True
    assert mesh_results["export"]["loaded_gate_spec"] == "P('fsdp', 'tp')"


def test_single_host_initialisation_is_a_no_op(monkeypatch):
    from gsjax.parallel import initialize_distributed

    for var in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    assert initialize_distributed() is False


def test_parameters_really_are_sharded(mesh_results):
    assert mesh_results[(1, 1, 8)]["q_proj_spec"] == "P(None, 'tp', None)"
    assert mesh_results[(2, 2, 2)]["q_proj_spec"] == "P('fsdp', 'tp', None)"
    assert mesh_results[(8, 1, 1)]["q_proj_spec"] == "P(None, None, None)"


def test_mesh_shape_fills_and_validates():
    assert mesh_shape({"data": -1, "tp": 2}, 8) == (4, 1, 2)
    assert mesh_shape({"fsdp": 8}, 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="needs 4 devices, but 8 are available"):
        mesh_shape({"data": 2, "tp": 2}, 8)
    with pytest.raises(ValueError, match="unknown axes"):
        mesh_shape({"model": 8}, 8)


def test_logical_rules_replicate_dimensions_that_do_not_divide():
    mesh = {"data": 1, "fsdp": 2, "tp": 8}
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 4, 16), mesh) == P("fsdp", None, None)
    assert logical_to_spec(("embed", "q_heads", "head_dim"), (64, 8, 16), mesh) == P("fsdp", "tp", None)
    assert logical_to_spec(("act_batch", "act_len"), (8, 32), {"data": 2, "fsdp": 2, "tp": 2}) == P(("data", "fsdp"), None)
    with pytest.raises(KeyError, match="'bogus' has no rule"):
        logical_to_spec(("bogus",), (4,), mesh)
