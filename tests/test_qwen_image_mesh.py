"""The sharded Qwen-Image transformer and sampling loop equal one device: a separate process with
8 simulated CPU devices (tests/qwen_image_mesh_worker.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def results():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "qwen_image_mesh_worker.py")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {tuple(r["mesh"]): r for r in rows}


GOOD = [(1, 1, 8), (1, 4, 2)]


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
@pytest.mark.xfail(strict=True, reason="known, unexplained: batch 8 over data x fsdp = 2 x 2 with tp = 2 gives "
                   "errors up to 4e-2 on the CPU backend (every 2-axis sub-mesh and batch 1 on the same mesh agree); "
                   "see docs/qwen_image.md")
def test_sharded_transformer_on_2x2x2_equals_one_device(results):
    assert results[(2, 2, 2)]["max_abs_err"] <= 1e-5, results[(2, 2, 2)]
