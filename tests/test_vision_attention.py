"""segment_attention, the vision towers' attention: "blocked" (flash attention in blocks, key blocks
skipped by segment) computes what "plain" (one masked softmax over [H, P, P]) does, forward and
gradients, for every layout of images a tower sees; so does a whole tower; and on a mesh the
queries stay sharded with no [P, P] array anywhere.

Gradients are those of sum(out * w) with w random everywhere, padding included: a padding patch
(segment 0) attends to nothing and its output is 0 in both implementations.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gsjax.models.attention import _key_runs, segment_attention
from gsjax.models.qwen3_vl_vision import VisionTower, tiny_vision_config, vision_layout
from subprocess_env import worker_env

FP32_TOL = 1e-5
H, D = 3, 16
WORKER = Path(__file__).parent / "attention_mesh_worker.py"


def runs(*lengths: int) -> np.ndarray:
    """Segment ids of consecutive runs: a positive length is the next image, a negative one padding."""
    seg, image = [], 0
    for n in lengths:
        image += n > 0
        seg += [image if n > 0 else 0] * abs(n)
    return np.asarray(seg, np.int32)


LAYOUTS = {
    # Images whose patch counts are not multiples of the block, padding at the end (a bucket).
    "images then padding": (runs(37, 100, 1, 64, 22, -40), 16),
    "a single image": (runs(200), 32),
    "a single image smaller than one block": (runs(24), 64),
    # Two processes' blocks of a micro-batch, each its images then padding (segments offset).
    "padding between images": (np.concatenate([runs(50, 30, -48), runs(90, 38) + 100]), 16),
    "patches not a multiple of the block": (runs(45, 60, 3, -7), 32),
    "all padding": (runs(-64), 16),
    # Frames numbered out of order: still correct, only more key blocks visited.
    "segments out of order": (np.asarray([3] * 40 + [1] * 30 + [2] * 20 + [3] * 10, np.int32), 16),
}


def attention_and_grads(impl, q, k, v, seg, w, block):
    def loss(q, k, v):
        return jnp.sum(segment_attention(q, k, v, seg, impl=impl, block=block) * w)

    def both(q, k, v):
        return segment_attention(q, k, v, seg, impl=impl, block=block), jax.grad(loss, (0, 1, 2))(q, k, v)

    out, grads = jax.jit(both)(q, k, v)
    return np.asarray(out), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_blocked_equals_plain_forward_and_gradients(layout):
    seg, block = LAYOUTS[layout]
    rs = np.random.RandomState(len(seg))
    q, k, v, w = (jnp.asarray(rs.randn(len(seg), H, D).astype(np.float32)) for _ in range(4))
    seg = jnp.asarray(seg)
    plain_out, plain_grads = attention_and_grads("plain", q, k, v, seg, w, block)
    out, grads = attention_and_grads("blocked", q, k, v, seg, w, block)
    assert np.abs(out - plain_out).max() <= FP32_TOL
    for g, ref in zip(grads, plain_grads):
        assert np.abs(g - ref).max() <= FP32_TOL
    padding = np.asarray(seg) == 0
    assert not np.abs(out[padding]).any() and not np.abs(grads[0][padding]).any()  # 0 at padding
    assert not np.abs(grads[1][padding]).any() and not np.abs(grads[2][padding]).any()  # never seen
    if not padding.all():
        assert np.abs(plain_out[~padding]).max() > 0.1 and min(np.abs(g).max() for g in plain_grads) > 0.1


def test_plain_equals_attention_written_out_image_by_image():
    seg, _ = LAYOUTS["images then padding"]
    rs = np.random.RandomState(0)
    q, k, v = (rs.randn(len(seg), H, D) for _ in range(3))
    out = np.asarray(segment_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(seg)))
    expected = np.zeros_like(q)
    for image in range(1, seg.max() + 1):
        at = seg == image
        scores = np.einsum("qhd,khd->hqk", q[at], k[at]) / np.sqrt(D)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        expected[at] = np.einsum("hqk,khd->qhd", p / p.sum(-1, keepdims=True), v[at])
    assert np.abs(out - expected).max() <= FP32_TOL


def test_each_query_block_visits_only_the_key_blocks_of_its_own_images():
    # Blocks of 16: [0, 16) image 1; [16, 32) images 1 and 2; [32, 48) image 2; [48, 64) padding.
    seg = jnp.asarray(runs(20, 24, -20))
    first, count = _key_runs(seg, seg, 16)
    assert np.asarray(first).tolist()[:3] == [0, 0, 1] and np.asarray(count).tolist() == [2, 3, 2, 0]
    # A device's query blocks against every key block of the micro-batch (keys gathered).
    first, count = _key_runs(seg[32:], seg, 16)
    assert np.asarray(first).tolist()[0] == 1 and np.asarray(count).tolist() == [2, 0]


def test_settings_are_checked():
    q = jnp.zeros((8, 2, 4))
    with pytest.raises(ValueError, match="unknown segment attention impl 'flash'"):
        segment_attention(q, q, q, jnp.ones(8, jnp.int32), impl="flash")
    with pytest.raises(ValueError, match=r"segment_ids must be \[P\]"):
        segment_attention(q, q, q, jnp.ones(7, jnp.int32))
    with pytest.raises(ValueError, match="positive block"):
        segment_attention(q, q, q, jnp.ones(8, jnp.int32), impl="blocked", block=0)
    with pytest.raises(ValueError, match="attention='splash'"):
        tiny_vision_config(attention="splash")


def test_vision_tower_output_and_gradients_equal_with_plain_and_blocked():
    grids = [(1, 4, 6), (1, 6, 4), (1, 2, 2), (2, 2, 4)]  # 24 + 24 + 4 + 2 x 8 patches, a 2-frame video
    cfg = tiny_vision_config()
    layout = vision_layout(grids, cfg, pad_to=96).on_device()
    real = 68 // cfg.merge_unit  # 68 real patches: 17 tokens
    pixels = jnp.asarray(np.random.RandomState(0).randn(96, cfg.patch_dim).astype(np.float32))
    graphdef, state = nnx.split(VisionTower(cfg, rngs=nnx.Rngs(0)))

    def run(attention):
        blocked = graphdef if attention == "plain" else nnx.split(
            VisionTower(tiny_vision_config(attention="blocked", attention_block=16), rngs=nnx.Rngs(0)))[0]

        def loss(s):
            tokens, deepstack = nnx.merge(blocked, s)(pixels, layout)
            return jnp.sum(tokens[:real] ** 2) + jnp.sum(deepstack[:, :real] ** 2), (tokens, deepstack)

        (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
        return out, grads

    (tokens, deepstack), grads = run("plain")
    (tokens_b, deepstack_b), grads_b = run("blocked")
    assert np.abs(np.asarray(tokens_b - tokens)[:real]).max() <= FP32_TOL
    assert np.abs(np.asarray(deepstack_b - deepstack)[:, :real]).max() <= FP32_TOL
    errors = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grads, grads_b))
    assert max(errors) <= FP32_TOL
    scales = [float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)]
    assert min(scales) > 1e-4 and max(scales) > 0.1, scales  # every parameter has a gradient


def test_blocked_on_a_mesh_keeps_queries_sharded_and_holds_no_patches_by_patches_array():
    env = worker_env() | {"JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(WORKER), "segments"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert r["q_spec"] == r["out_spec"] == "P(('data', 'fsdp'), 'tp', None)"
    assert r["local_q_shapes"] and all(s == [128, 2, 16] for s in r["local_q_shapes"])  # 512 / 4 patches, 4 / 2 heads
    assert r["out_err"] <= FP32_TOL and r["grad_err"] <= FP32_TOL and r["grad_scale"] > 0.1
    # plain holds [heads, 128 queries, 512 keys] scores per device; blocked no array with two such sides.
    assert r["plain"]["square_shapes"] and not r["blocked"]["square_shapes"]
    assert r["blocked"]["temp_bytes"] < r["plain"]["temp_bytes"] / 4


def test_the_vl_8b_presets_and_loaded_checkpoints_run_the_tower_blocked():
    from gsjax import config as config_lib
    from gsjax.models import hf_io
    from gsjax.models.qwen3 import tiny_config
    from gsjax.models.qwen3_vl import Qwen3VLConfig
    from gsjax.plan import model_config
    from gsjax.train import run_settings

    for preset in ("configs/grpo.py:qwen3vl_8b", "configs/sft.py:qwen3vl_8b"):
        cfg = config_lib.cli([f"--config={preset}", "--config.model.vision_attention_block=256"], "configs/grpo.py")
        vision = model_config(cfg).vision
        assert (vision.attention, vision.attention_block, vision.dtype) == ("blocked", 256, "bfloat16")
        assert (vision.remat, vision.scan_blocks) == ("full", True)
    # A checkpoint's config.json says nothing of how to run: the run settings choose, the decoder's
    # own settings stay the decoder's, and a text model has no tower to set.
    vl = Qwen3VLConfig(tiny_config(vocab_size=64, hidden_size=48, num_heads=4, num_kv_heads=2, head_dim=12,
                                   mrope_section=(2, 2, 2)), tiny_vision_config(out_hidden_size=48),
                       image_token_id=60, vision_start_token_id=61, vision_end_token_id=62, video_token_id=63)
    run = run_settings(cfg)
    loaded = hf_io.config_from_hf(hf_io.config_to_hf(vl), **run)
    assert (loaded.vision.attention, loaded.vision.attention_block, loaded.vision.remat) == ("blocked", 256, "full")
    assert (loaded.text.attention, loaded.text.attention_block) == ("splash", 512)
    assert hf_io.config_from_hf(hf_io.config_to_hf(vl)).vision.attention == "plain"
    assert hf_io.with_run(vl, vision_attention="blocked").vision.attention == "blocked"
    text = hf_io.config_from_hf(hf_io.config_to_hf(vl.text), **run)
    assert text.attention == "splash" and not hasattr(text, "vision")
    # The text preset carries the tower settings of configs/grpo.py's base (for a tiny_vision policy);
    # a text model takes its decoder's share of them.
    text_run = run_settings(config_lib.cli(["--config=configs/grpo.py:qwen3_8b"], "configs/grpo.py"))
    assert text_run["vision_attention"] == "blocked"
    assert hf_io.with_run(vl.text, **text_run) == hf_io.with_run(vl.text, **hf_io.split_run(text_run)[0])
