"""The slot KV-cache sampler: equivalence with full forward passes, slots, stops, buckets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gsjax.models.interface import ModelInput
from gsjax.models.losses import token_logprobs
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.sampling import FinishReason, Sampler, SamplingParams, sample

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def model():
    return Qwen3(tiny_config(vocab_size=128), rngs=nnx.Rngs(0))


def _prompt(n, seed):
    return np.random.RandomState(seed).randint(0, 128, size=n).tolist()


@nnx.jit
def _full_logits(model, tokens):
    return model(ModelInput(tokens))


@nnx.jit
def _logprobs_t08(model, tokens):
    return token_logprobs(model, ModelInput(tokens), temperature=0.8)


def _greedy_reference(model, ids, n, width=128):
    """Greedy continuation by re-running the full model on the whole sequence each step.

    The sequence is zero-padded on the right to one width: causal attention makes the logits at
    position t independent of what follows, and one width means one compilation.
    """
    ids = list(ids)
    out = []
    for _ in range(n):
        padded = np.zeros((1, width), np.int32)
        padded[0, : len(ids)] = ids
        nxt = int(jnp.argmax(_full_logits(model, jnp.asarray(padded))[0, len(ids) - 1]))
        out.append(nxt)
        ids.append(nxt)
    return out


def test_greedy_matches_full_forward_recomputation(model):
    sampler = Sampler(model, num_slots=2, cache_len=64, params=GREEDY)
    prompt = _prompt(7, 0)
    (turn,) = sampler.generate([prompt], max_new_tokens=12)
    assert turn.tokens == _greedy_reference(model, prompt, 12)
    assert turn.finish is FinishReason.LENGTH


def test_sampled_logprobs_equal_learner_logprobs(model):
    sampler = Sampler(model, num_slots=4, cache_len=64, params=SamplingParams(temperature=0.8), seed=3)
    prompts = [_prompt(n, n) for n in (3, 8, 13)]
    for prompt, turn in zip(prompts, sampler.generate(prompts, max_new_tokens=20)):
        full = np.zeros((1, 64), np.int32)  # one padded width: one compilation (causal, so exact)
        full[0, : len(prompt) + len(turn.tokens)] = prompt + turn.tokens
        ref = np.asarray(_logprobs_t08(model, jnp.asarray(full)))[0, len(prompt) : len(prompt) + len(turn.tokens)]
        np.testing.assert_allclose(turn.logprobs, ref, atol=1e-4)


def test_append_continues_without_reencoding_and_equals_fresh_prompt(model):
    sampler = Sampler(model, num_slots=3, cache_len=96, params=GREEDY)
    prompt, observation = _prompt(9, 1), _prompt(6, 2)
    other = _prompt(5, 4)
    sampler.start(0, prompt, max_new_tokens=5)
    sampler.start(2, other, max_new_tokens=40)  # a long turn that keeps decoding meanwhile
    turns = {}
    while 0 not in turns:
        turns.update({t.slot: t for t in sampler.step()})
    first = turns.pop(0)
    length_before = sampler.slot_length(0)
    sampler.append(0, observation, max_new_tokens=8)
    assert sampler.slot_length(0) == length_before + len(observation)
    while 0 not in turns or 2 not in turns:
        turns.update({t.slot: t for t in sampler.step()})
    # The continued conversation equals a fresh one holding the whole history as its prompt.
    history = prompt + first.tokens + observation
    assert turns[0].tokens == _greedy_reference(model, history, 8)
    # The slot decoding alongside was not disturbed by the insert.
    assert turns[2].tokens == _greedy_reference(model, other, 40)


def test_stop_token_ends_turn_and_is_included(model):
    prompt = _prompt(6, 5)
    free_run = _greedy_reference(model, prompt, 10)
    stop = free_run[4]
    first = free_run.index(stop)
    sampler = Sampler(model, num_slots=1, cache_len=64, params=GREEDY, stop_token_ids=[stop])
    (turn,) = sampler.generate([prompt], max_new_tokens=10)
    assert turn.finish is FinishReason.STOP_TOKEN and turn.stop == stop
    assert turn.tokens == free_run[: first + 1]


def _letters(ids):
    return "".join(chr(ord("a") + i % 26) + ("|" if i % 7 == 0 else "") for i in ids)


def test_stop_string_across_tokens_truncates_and_rolls_back_cache(model):
    prompt = _prompt(6, 6)
    free_run = _greedy_reference(model, prompt, 30)
    text = _letters(free_run)
    # A stop string spanning the boundary of tokens 9 and 10, ending on a character of token 10.
    stop = _letters(free_run[9:10])[-1] + _letters(free_run[10:11])
    cut = next(j for j in range(1, 31) if stop in _letters(free_run[:j]))
    assert stop in text and cut <= 11
    sampler = Sampler(model, num_slots=2, cache_len=96, params=GREEDY, stop_strings=[stop], decode=_letters, chunk=16)
    (turn,) = sampler.generate([prompt], max_new_tokens=30)
    assert turn.finish is FinishReason.STOP_STRING and turn.stop == stop
    assert turn.tokens == free_run[:cut]
    # Tokens decoded past the stop were dropped from the slot: the next turn sees only the kept ones.
    observation = _prompt(4, 7)
    sampler.append(turn.slot, observation, max_new_tokens=6)
    (nxt,) = [t for _ in range(3) for t in sampler.step()]
    assert nxt.tokens == _greedy_reference(model, prompt + free_run[:cut] + observation, 6)


def test_prompts_longer_than_the_largest_bucket_are_prefilled_in_chunks(model):
    prompt = _prompt(45, 8)
    sampler = Sampler(model, num_slots=1, cache_len=128, params=GREEDY, prefill_buckets=(8, 16))
    (turn,) = sampler.generate([prompt], max_new_tokens=6)
    assert turn.tokens == _greedy_reference(model, prompt, 6)
    assert set(sampler.compile_counts) == {"prefill[1x16]", "decode"}


def test_cache_full_is_a_finish_reason_not_a_crash(model):
    sampler = Sampler(model, num_slots=2, cache_len=32, params=GREEDY)
    too_long, fits = _prompt(40, 9), _prompt(26, 10)
    turns = sampler.generate([too_long, fits], max_new_tokens=20)
    assert turns[0].finish is FinishReason.CACHE_FULL and turns[0].tokens == []
    assert turns[1].finish is FinishReason.CACHE_FULL
    assert len(fits) + len(turns[1].tokens) == 32  # the whole conversation fills cache_len
    assert turns[1].tokens == _greedy_reference(model, fits, len(turns[1].tokens))


def test_five_batches_of_different_lengths_in_one_bucket_compile_once(model):
    sampler = Sampler(model, num_slots=4, cache_len=128, params=SamplingParams(temperature=1.0), prefill_buckets=(32, 64))
    for i, length in enumerate((17, 20, 25, 29, 33)):  # 33 tokens = 32 written + 1 pending
        prompts = [_prompt(length, 10 * i + j) for j in range(4)]
        turns = sampler.generate(prompts, max_new_tokens=8)
        assert all(len(t.tokens) == 8 for t in turns)
    assert dict(sampler.compile_counts) == {"prefill[4x32]": 1, "decode": 1}
    assert sampler.programs.jitted_prefill._cache_size() == 1 and sampler.programs.jitted_decode._cache_size() == 1


# ----------------------------------------------------------------------------- sample()


def test_sample_filters():
    logits = jnp.asarray([[0.0, 2.0, 1.0, -1.0, 1.5]] * 4000)
    key = jax.random.key(0)
    top1, _, _ = sample(logits, key, SamplingParams(temperature=1.0, top_k=1))
    assert set(np.asarray(top1).tolist()) == {1}
    top2, _, _ = sample(logits, key, SamplingParams(temperature=1.0, top_k=2))
    assert set(np.asarray(top2).tolist()) == {1, 4}
    # top_p 0.6: probabilities sorted are [.42, .26, .15, .13, .03]; the prefix reaching 0.6 is 2 tokens.
    nucleus, _, _ = sample(logits, key, SamplingParams(temperature=1.0, top_p=0.6))
    assert set(np.asarray(nucleus).tolist()) == {1, 4}
    greedy, lp, sure = sample(logits[:1], key, GREEDY)
    assert int(greedy[0]) == 1
    np.testing.assert_allclose(float(lp[0]), float(jax.nn.log_softmax(logits[0])[1]), rtol=1e-6)
    assert float(sure[0]) == 0.0  # a greedy draw is certain


def test_behavior_logprobs_are_those_of_the_truncated_renormalised_distribution():
    """top_k 3 at temperature 0.5 keeps [1, 4, 2]; top_p 0.9 of their renormalised probabilities
    keeps the prefix reaching 0.9. The behaviour log-probability is under what is kept, renormalised;
    `logprobs` stays under the whole softmax at the temperature (what the learner recomputes)."""
    logits = jnp.asarray([[0.0, 2.0, 1.0, -1.0, 1.5]] * 2000)
    params = SamplingParams(temperature=0.5, top_k=3, top_p=0.9)
    tokens, logprobs, behavior = sample(logits, jax.random.key(2), params)
    full = np.asarray(jax.nn.softmax(logits[0] / 0.5), np.float64)
    order = np.argsort(-full)[:3]
    top = full[order] / full[order].sum()
    kept = order[: int(np.searchsorted(np.cumsum(top), 0.9) + 1)]
    q = np.zeros(5)
    q[kept] = full[kept] / full[kept].sum()
    toks = np.asarray(tokens)
    assert set(toks.tolist()) == set(kept.tolist()) and len(kept) < 5
    np.testing.assert_allclose(np.exp(np.asarray(behavior)), q[toks], rtol=1e-5)
    np.testing.assert_allclose(np.exp(np.asarray(logprobs)), full[toks], rtol=1e-5)
    np.testing.assert_allclose(np.bincount(toks, minlength=5) / len(toks), q, atol=0.03)


def test_sample_frequencies_follow_softmax_at_temperature():
    logits = jnp.asarray([[0.0, 2.0, 1.0, -1.0, 1.5]] * 20000)
    tokens, logprobs, behavior = sample(logits, jax.random.key(1), SamplingParams(temperature=2.0))
    expected = np.asarray(jax.nn.softmax(logits[0] / 2.0))
    freq = np.bincount(np.asarray(tokens), minlength=5) / 20000
    np.testing.assert_allclose(freq, expected, atol=0.015)
    np.testing.assert_allclose(np.exp(np.asarray(logprobs)), expected[np.asarray(tokens)], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(behavior), np.asarray(logprobs))  # nothing truncated: the same


def test_bad_sampling_params_are_rejected():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)


def test_a_seeded_conversation_draws_the_same_tokens_in_any_slot_and_company(model):
    """Draws depend on the conversation's seed and position only: not on the slot, on what else
    is decoding, or on when its next turn is appended (what makes rollouts reproducible)."""
    t = SamplingParams(temperature=1.0)
    alone = Sampler(model, num_slots=4, cache_len=128, params=t, seed=3)
    alone.start(0, _prompt(9, 1), 12, seed=77)
    first = _drain(alone)
    alone.append(0, [5, 6], 10)
    second = _drain(alone)

    crowded = Sampler(model, num_slots=4, cache_len=128, params=t, seed=3, chunk=5)
    for slot, p in ((0, 2), (1, 3), (3, 4)):
        crowded.start(slot, _prompt(20, p), 30)
    crowded.start(2, _prompt(9, 1), 12, seed=77)
    mine = [tr for tr in _drain(crowded) if tr.slot == 2]
    crowded.append(2, [5, 6], 10)
    later = _drain(crowded)
    assert mine[0].tokens == first[0].tokens and len(first[0].tokens) == 12
    assert [tr.tokens for tr in later if tr.slot == 2] == [second[0].tokens]
    other = Sampler(model, num_slots=4, cache_len=128, params=t, seed=3)
    other.start(0, _prompt(9, 1), 12, seed=78)
    assert _drain(other)[0].tokens != first[0].tokens


def _drain(sampler):
    turns = []
    while sampler.busy:
        turns += sampler.step()
    return turns


def test_forced_tokens_are_emitted_with_the_models_logprobs_then_sampling_resumes(model):
    t08 = SamplingParams(temperature=0.8)
    sampler = Sampler(model, num_slots=2, cache_len=128, params=t08, seed=0, chunk=4)
    prompt, script = _prompt(10, 5), _prompt(7, 6)
    sampler.start(0, prompt, 12, forced=script)  # 7 forced over two chunks, then 5 drawn
    sampler.start(1, _prompt(10, 7), 12)
    turn = next(tr for tr in _drain(sampler) if tr.slot == 0)
    assert turn.tokens[:7] == script and len(turn.tokens) == 12
    full = np.asarray(_logprobs_t08(model, jnp.asarray([prompt + turn.tokens])))[0]
    np.testing.assert_allclose(turn.logprobs, full[len(prompt):], atol=1e-4)
