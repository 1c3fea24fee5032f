"""causal_attention: every implementation computes the same thing as the plain masked softmax.

Inputs throughout: two rows packed with segments of different lengths, padding at the end of
each row (segment id 0), grouped-query attention (4 query heads over 2 kv heads). Outputs are
compared at non-padding queries only; gradients are those of sum(out * w) with w zero at padding
queries, so they cannot depend on what padding queries produce.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gsjax.models.attention import IMPLEMENTATIONS, causal_attention, segment_mask
from subprocess_env import worker_env

B, T, H, KV, D = 2, 256, 4, 2, 32
FP32_TOL = 1e-5
# bf16 (inputs, probabilities and outputs rounded to 8 bits of mantissa) against the fp32 plain
# result: outputs (values of order 1) to 3e-2 absolute, gradients to 2e-2 of their largest entry.
BF16_OUT_TOL, BF16_GRAD_TOL = 3e-2, 2e-2
RUNNABLE_HERE = ("blocked", "xla", "splash")  # besides "plain"; "cudnn" needs an NVIDIA GPU
WORKER = Path(__file__).parent / "attention_mesh_worker.py"


def packed_segments(t=T):
    seg = np.zeros((B, t), np.int32)
    seg[0, :100], seg[0, 100:230] = 1, 2  # 2 segments, 26 padding tokens
    seg[1, :37], seg[1, 37:60], seg[1, 60:200] = 1, 2, 3  # 3 segments, 56 padding tokens
    return seg


def make_case(t=T, seed=0):
    rs = np.random.RandomState(seed)
    q = rs.randn(B, t, H, D).astype(np.float32)
    k = rs.randn(B, t, KV, D).astype(np.float32)
    v = rs.randn(B, t, KV, D).astype(np.float32)
    seg = packed_segments(t)
    w = (rs.randn(B, t, H, D) * (seg != 0)[:, :, None, None]).astype(np.float32)
    return q, k, v, seg, w


def run(impl, q, k, v, seg, w, dtype=jnp.float32, **kw):
    """(output, (dq, dk, dv)) of `impl`, jitted, as fp32 numpy."""
    def loss(q, k, v):
        return jnp.sum(causal_attention(q, k, v, seg, impl=impl, **kw).astype(jnp.float32) * w)

    def both(q, k, v):
        return causal_attention(q, k, v, seg, impl=impl, **kw), jax.grad(loss, (0, 1, 2))(q, k, v)

    out, grads = jax.jit(both)(*(jnp.asarray(x, dtype) for x in (q, k, v)))
    return np.asarray(out.astype(jnp.float32)), [np.asarray(g.astype(jnp.float32)) for g in grads]


@pytest.fixture(scope="module")
def case():
    q, k, v, seg, w = make_case()
    return (q, k, v, seg, w), run("plain", q, k, v, seg, w)


def brute_force(q, k, v, seg):
    """Attention written out query by query in float64 NumPy."""
    b_, t_, h_, d_ = q.shape
    group = h_ // k.shape[2]
    out = np.zeros(q.shape, np.float64)
    for b in range(b_):
        for t in range(t_):
            if seg[b, t] == 0:
                continue
            visible = [s for s in range(t + 1) if seg[b, s] == seg[b, t]]
            for h in range(h_):
                keys, values = k[b, visible, h // group], v[b, visible, h // group]
                logits = keys.astype(np.float64) @ q[b, t, h].astype(np.float64) / np.sqrt(d_)
                p = np.exp(logits - logits.max())
                out[b, t, h] = (p / p.sum()) @ values
    return out


def test_plain_equals_a_brute_force_numpy_reference(case):
    (q, k, v, seg, _), (out, _) = case
    valid = seg != 0
    err = np.abs(out - brute_force(q, k, v, seg))[valid].max()
    assert err <= FP32_TOL, err


@pytest.mark.parametrize("impl", RUNNABLE_HERE)
def test_fp32_equals_plain_outputs_and_gradients(case, impl):
    inputs, (ref_out, ref_grads) = case
    out, grads = run(impl, *inputs)
    valid = inputs[3] != 0
    out_err = np.abs(out - ref_out)[valid].max()
    grad_err = max(np.abs(g - r).max() for g, r in zip(grads, ref_grads))
    assert min(np.abs(r).max() for r in ref_grads) > 1.0  # the gradients compared are not trivial
    assert out_err <= FP32_TOL and grad_err <= FP32_TOL, (impl, out_err, grad_err)
    assert np.isfinite(out).all()  # padding queries too


@pytest.mark.parametrize("impl", ("plain",) + RUNNABLE_HERE)
def test_bf16_equals_fp32_plain_within_bf16_tolerance(case, impl):
    inputs, (ref_out, ref_grads) = case
    out, grads = run(impl, *inputs, dtype=jnp.bfloat16)
    valid = inputs[3] != 0
    out_err = np.abs(out - ref_out)[valid].max()
    grad_err = max(np.abs(g - r).max() / np.abs(r).max() for g, r in zip(grads, ref_grads))
    assert out_err <= BF16_OUT_TOL and grad_err <= BF16_GRAD_TOL, (impl, out_err, grad_err)


def test_blocked_falls_back_to_plain_when_blocks_do_not_tile():
    q, k, v, seg, w = make_case(t=200)
    ref_out, ref_grads = run("plain", q, k, v, seg, w)
    out, grads = run("blocked", q, k, v, seg, w, block=128)
    assert np.abs(out - ref_out)[seg != 0].max() <= FP32_TOL
    assert max(np.abs(g - r).max() for g, r in zip(grads, ref_grads)) <= FP32_TOL


def test_splash_needs_t_a_multiple_of_its_block():
    q, k, v, seg, _ = make_case(t=200)
    with pytest.raises(ValueError, match=r"T=200, block=128"):
        causal_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg), impl="splash")
    q, k, v, seg, _ = make_case()
    with pytest.raises(ValueError, match=r"T=256, block=512"):
        causal_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg), impl="splash", block=512)
    with pytest.raises(ValueError, match=r"multiple of 128; got block=64"):
        causal_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg), impl="splash", block=64)


def test_unknown_impl_lists_the_implementations():
    q, k, v, seg, _ = make_case()
    with pytest.raises(ValueError, match="expected one of") as e:
        causal_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg), impl="flash")
    assert all(name in str(e.value) for name in IMPLEMENTATIONS)


# cuDNN: no GPU here. What can be checked: the argument checks, the clear error without cuDNN,
# that forward and gradient lower for CUDA to cuDNN's fused kernels with the mask as a bias, and
# that the bias jax hands cuDNN, with causal masking, gives plain's result.

def _bf16_inputs(q, k, v, seg):
    return (*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), jnp.asarray(seg))


def test_cudnn_refuses_what_cudnn_cannot_run():
    q, k, v, seg, _ = make_case()
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        causal_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg), impl="cudnn")
    bq, bk, bv, bs = _bf16_inputs(q, k, v, seg)
    with pytest.raises(ValueError, match="multiple of 8 and <= 256; got D=12"):
        causal_attention(bq[..., :12], bk[..., :12], bv[..., :12], bs, impl="cudnn")
    with pytest.raises(ValueError, match="even sequence length.*T=255"):
        causal_attention(bq[:, :255], bk[:, :255], bv[:, :255], bs[:, :255], impl="cudnn")
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match="needs an NVIDIA GPU with cuDNN"):
            causal_attention(bq, bk, bv, bs, impl="cudnn")


def test_cudnn_lowers_to_fused_flash_attention_with_the_segment_bias(monkeypatch):
    from jax._src.cudnn import fused_attention_stablehlo as fa

    monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)  # pretend cuDNN 9.10 is present
    q, k, _, seg, _ = make_case()
    args = (jax.ShapeDtypeStruct(q.shape, jnp.bfloat16), jax.ShapeDtypeStruct(k.shape, jnp.bfloat16),
            jax.ShapeDtypeStruct(k.shape, jnp.bfloat16), jax.ShapeDtypeStruct(seg.shape, jnp.int32))
    fwd = lambda q, k, v, s: causal_attention(q, k, v, s, impl="cudnn")  # noqa: E731
    grad = jax.grad(lambda q, k, v, s: jnp.sum(fwd(q, k, v, s).astype(jnp.float32)), (0, 1, 2))
    bias = f"tensor<{B}x1x{T}x{T}xbf16>"
    for f, calls in [(fwd, ["fmhaScaleBiasSoftmax("]),
                     (grad, ["fmhaScaleBiasSoftmax(", "fmhaScaleBiasSoftmaxBackward("])]:
        text = jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text().replace("\\22", '"')
        lines = [line for line in text.splitlines() if "__cudnn$fmha" in line]
        assert [c for c in calls if any(c in line for line in lines)] == calls, lines
        for line in lines:
            assert '"mask_type": "CAUSAL"' in line and '"is_flash_attention": true' in line
            assert bias in line, line
            assert float(re.search(r'"fmha_scale": ([0-9.e-]+)', line).group(1)) == pytest.approx(D**-0.5)


def test_what_cudnn_is_asked_to_compute_equals_plain(case):
    from jax._src.cudnn.fused_attention_stablehlo import combine_bias_and_mask

    inputs, (ref_out, _) = case
    q, k, v, seg = _bf16_inputs(*inputs[:4])
    bias = combine_bias_and_mask(None, segment_mask(seg)[:, None], jnp.bfloat16)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True, implementation="xla")
    valid = inputs[3] != 0
    assert np.abs(np.asarray(out.astype(jnp.float32)) - ref_out)[valid].max() <= BF16_OUT_TOL


def _worker(*args, extra_env=None):
    env = worker_env()
    env.update(JAX_PLATFORMS="cpu", **(extra_env or {}))
    proc = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_splash_on_a_mesh_equals_one_device():
    rows = {tuple(r["heads"]): r for r in _worker()}
    # 4 query heads over 2 kv heads: batch over (data, fsdp), heads over tp, in the kernel's view
    r = rows[(4, 2)]
    assert r["manual"] and r["specs"][:2] == ["P(('data', 'fsdp'), None, 'tp', None)"] * 2, r
    assert r["kernel_q_shapes"][0] == [1, T, 2, D], r
    # one kv head cannot split over tp=2: the query heads stay whole with it
    r1 = rows[(4, 1)]
    assert r1["kernel_q_shapes"][0] == [1, T, 4, D], r1
    for r in rows.values():
        assert r["finite"] and r["grad_norm"] > 1.0
        assert r["out_err"] <= FP32_TOL and r["grad_err"] <= FP32_TOL, r


def test_splash_compiles_ahead_of_time_for_a_v5p_8():
    pytest.importorskip("libtpu", reason="needs libtpu (pip install 'jax[tpu]==0.10.2') for TPU AOT")
    # XLA_FLAGS empty: the TPU compiler at its own optimisation level (the suite's level 0 is for the CPU)
    rows = {r["aot"]: r for r in _worker("aot", extra_env=dict(TPU_ACCELERATOR_TYPE="v5p-8", XLA_FLAGS="",
                                                               TPU_WORKER_HOSTNAMES="localhost"))}
    for name, kernels in [("forward", 1), ("gradient", 3)]:  # fwd; fwd + dq + dkv
        r = rows[name]
        print(name, r["memory_analysis"])
        assert r["mosaic_kernels"] == kernels, r  # the compiled Mosaic kernel, not interpret mode
        assert r["temp_bytes"] < r["fp32_scores_bytes_per_chip"] / 8, r


def test_cache_attention_in_blocks_equals_one_softmax_and_skips_blocks_no_row_reached():
    from gsjax.models.attention import attend, cached_attention

    rs = np.random.RandomState(3)
    q = jnp.asarray(rs.randn(3, 5, 4, 16).astype(np.float32))
    k = jnp.asarray(rs.randn(3, 64, 2, 16).astype(np.float32))
    v = jnp.asarray(rs.randn(3, 64, 2, 16).astype(np.float32))
    positions = jnp.asarray([[0, 1, 2, 3, 4], [30, 31, 32, 33, 34], [9, 10, 11, 12, 13]])
    whole = cached_attention(q, k, v, positions, block=0)
    mask = np.arange(64)[None, None, :] <= np.asarray(positions)[:, :, None]
    np.testing.assert_allclose(np.asarray(whole), np.asarray(attend(q, k, v, jnp.asarray(mask))), atol=1e-6)
    for block in (8, 16, 32):
        np.testing.assert_allclose(np.asarray(cached_attention(q, k, v, positions, block=block)),
                                   np.asarray(whole), atol=1e-5)
    # Keys past position 34 are never read: garbage there changes nothing.
    poisoned = k.at[:, 40:].set(jnp.nan), v.at[:, 40:].set(jnp.nan)
    np.testing.assert_allclose(np.asarray(cached_attention(q, *poisoned, positions, block=8)), np.asarray(whole),
                               atol=1e-5)
