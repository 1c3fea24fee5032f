"""The learner at any size runs the same numbers: scanned layers, rematerialisation, attention
implementations, vocabulary-chunked log-probabilities and micro-batches each equal the plain
computation (1e-5, fp32)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gsjax.models.interface import ModelInput
from gsjax.models.losses import target_logprobs, token_logprobs
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.rl.grpo import LossConfig
from gsjax.rl.trainer import GRPOConfig, GRPOTrainer, Sample, make_rows, step_statistics

CFG = tiny_config(vocab_size=97, tie_embeddings=False)


def _packed_inputs(t=256, seed=0):
    rs = np.random.RandomState(seed)
    tokens = rs.randint(0, CFG.vocab_size, (2, t)).astype(np.int32)
    segments = np.zeros((2, t), np.int32)
    segments[0, :100], segments[0, 100:230] = 1, 2  # two sequences, then padding
    segments[1, :] = 1
    positions = np.zeros((2, t), np.int32)
    positions[0, :100], positions[0, 100:] = np.arange(100), np.arange(t - 100)
    positions[1] = np.arange(t)
    return jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments)


def _flat_grads(model, fn):
    grads = nnx.grad(fn)(model)
    return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(grads)}


def _unstack(grads: dict, num_layers: int) -> dict:
    """Gradients of a scanned model keyed like an unscanned one's."""
    out = {}
    for path, g in grads.items():
        if path[0] == "layers":
            for i in range(num_layers):
                out[("layers", i) + path[1:]] = g[i]
        else:
            out[path] = g
    return out


@pytest.mark.parametrize("run", [dict(scan_layers=True), dict(remat="full"), dict(remat="dots"),
                                 dict(scan_layers=True, remat="dots_no_batch"), dict(attention="plain"),
                                 dict(attention="xla")])
def test_how_the_model_runs_does_not_change_logits_or_gradients(run):
    tokens, positions, segments = _packed_inputs()
    base = Qwen3(CFG, rngs=nnx.Rngs(0))
    other = Qwen3(dataclasses.replace(CFG, **run), rngs=nnx.Rngs(0))  # same seed, same initial values
    real = np.asarray(segments) > 0
    inputs = ModelInput(tokens, positions, segments)
    a, b = base(inputs), other(inputs)
    np.testing.assert_allclose(np.asarray(b)[real], np.asarray(a)[real], atol=1e-5)

    def loss(m):
        return token_logprobs(m, ModelInput(tokens, positions, segments)).sum()

    ga = _flat_grads(base, loss)
    gb = _flat_grads(other, loss)
    if run.get("scan_layers"):
        gb = _unstack(gb, CFG.num_layers)
    assert set(ga) == set(gb)
    scale = max(np.abs(g).max() for g in ga.values())
    for path in ga:
        np.testing.assert_allclose(gb[path], ga[path], atol=1e-5 * max(1.0, scale), err_msg=str(path))


@pytest.mark.parametrize("chunk", [10, 32, 96])  # uneven (padded) and even splits of 97 ids
def test_vocabulary_chunked_logprobs_equal_the_full_softmax(chunk):
    rs = np.random.RandomState(1)
    hidden = jnp.asarray(rs.randn(3, 7, 16).astype(np.float32))
    head = jnp.asarray(rs.randn(16, 97).astype(np.float32))
    targets = jnp.asarray(rs.randint(0, 97, (3, 7)))
    full = target_logprobs(hidden, head, targets, temperature=0.7)
    chunked = target_logprobs(hidden, head, targets, temperature=0.7, vocab_chunk=chunk)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(full), atol=1e-5)
    grad = jax.grad(lambda h, w, c: target_logprobs(h, w, targets, temperature=0.7, vocab_chunk=c).sum(),
                    argnums=(0, 1))
    for g_chunk, g_full in zip(grad(hidden, head, chunk), grad(hidden, head, 0)):
        np.testing.assert_allclose(np.asarray(g_chunk), np.asarray(g_full), atol=1e-5)


def test_chunked_logprobs_never_hold_the_batch_by_vocab_logits():
    """Compiled, the chunked version's temporaries are far below one [B, T, V] fp32 array."""
    b, t, e, v = 4, 512, 64, 32_768

    def fn(chunk):
        def f(h, w, y):
            return jax.grad(lambda h, w: target_logprobs(h, w, y, vocab_chunk=chunk).sum(), argnums=(0, 1))(h, w)
        args = (jax.ShapeDtypeStruct((b, t, e), jnp.float32), jax.ShapeDtypeStruct((e, v), jnp.float32),
                jax.ShapeDtypeStruct((b, t), jnp.int32))
        return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = b * t * v * 4
    assert fn(0) >= logits_bytes  # the full version does hold it (at least once)
    assert fn(1024) < logits_bytes / 4  # a few [B, T, 1024] chunks (each 1/32 of the logits)


def _samples(n=12, seed=0):
    rs = np.random.RandomState(seed)
    out = []
    for i in range(n):
        length = int(rs.randint(20, 90))
        prompt = int(rs.randint(5, 15))
        out.append(Sample(rs.randint(0, CFG.vocab_size, length).tolist(), [0] * prompt + [1] * (length - prompt),
                          (-rs.rand(length)).tolist(), [0] * prompt + [1] * (length - prompt), group=i // 4,
                          reward=float(rs.rand()), failed=i == 5))
    return out


@pytest.mark.parametrize("agg", ["seq-mean-token-sum", "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batched_step_equals_the_unbatched_one(agg):
    """Rows of 128 tokens, micro-batches of one row vs all rows at once: the same loss, gradients
    and metrics; and both equal the reference aggregation over unpacked, padded sequences."""
    samples = _samples()
    loss_cfg = LossConfig(agg=agg)
    whole = GRPOTrainer(Qwen3(CFG, rngs=nnx.Rngs(0)), GRPOConfig(row_len=128, loss=loss_cfg, temperature=0.9))
    micro = GRPOTrainer(Qwen3(CFG, rngs=nnx.Rngs(0)),
                        GRPOConfig(row_len=128, loss=loss_cfg, temperature=0.9, micro_batch_tokens=128))
    rows = make_rows(samples, step_statistics(samples, whole.cfg), whole.cfg)
    assert len(rows["tokens"]) > 4  # several rows, several sequences per row
    loss_a, grads_a = whole.loss_and_grads(rows)
    loss_b, grads_b = micro.loss_and_grads(rows)
    assert micro.global_batch(rows)["tokens"].shape[0] == 8  # 7 rows -> 8 micro-batches of 1 row
    assert loss_b == pytest.approx(loss_a, abs=1e-5)
    for ga, gb in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(np.asarray(gb), np.asarray(ga), atol=1e-5)

    # The reference: one padded row per sequence, the loss aggregated by rl.grpo.policy_loss.
    from gsjax.rl.grpo import group_advantages, policy_loss

    model = whole.model
    n = 128  # padded to the row length: seq-mean-token-sum-norm divides by it, the other modes ignore padding
    tokens = np.zeros((len(samples), n), np.int32)
    mask = np.zeros((len(samples), n), np.float32)
    for i, s in enumerate(samples):
        tokens[i, :len(s.tokens)] = s.tokens
        mask[i, :len(s.tokens)] = 0 if s.failed else s.loss_mask
    adv = group_advantages(np.array([s.reward for s in samples]), np.array([str(s.group) for s in samples]),
                           np.array([not s.failed for s in samples]))
    logp = token_logprobs(model, ModelInput(jnp.asarray(tokens)), temperature=0.9)
    ref, _ = policy_loss(logp, jax.lax.stop_gradient(logp), jnp.asarray(adv), jnp.asarray(mask), loss_cfg)
    assert loss_a == pytest.approx(float(ref), abs=1e-5)

    ma, mb = whole.update(rows), micro.update(rows)
    for key in ("loss", "grad_norm", "clip_frac", "approx_kl_old", "ppo_kl", "mismatch_abs"):
        assert mb[key] == pytest.approx(ma[key], abs=1e-5), key
    assert ma["micro_batches"] == 1 and mb["micro_batches"] == 8


def test_a_trajectory_longer_than_the_rows_is_refused_with_the_setting_to_change():
    cfg = GRPOConfig(row_len=16)
    s = [Sample(list(range(20)), [1] * 20, [0.0] * 20, [1] * 20, group=0, reward=1.0)]
    with pytest.raises(ValueError, match=r"20 tokens is longer than the learner's rows \(row_len=16\)"):
        make_rows(s, step_statistics(s, cfg), cfg)
