"""The GRPO learner end to end on a toy bandit: rewarded completions become more likely."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gsjax.models.interface import ModelInput
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.rl.grpo import LossConfig
from gsjax.rl.trainer import GRPOConfig, GRPOTrainer, Sample, make_rows, step_statistics
from gsjax.sampling import Sampler, SamplingParams

PROMPTS = [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
TARGET = 17  # the completion the reward pays for


def _p_target(model):
    probs = []
    for p in PROMPTS:
        logits = model(ModelInput(jnp.asarray([p])))[0, -1]
        probs.append(float(jax.nn.softmax(logits)[TARGET]))
    return float(np.mean(probs))


def test_grpo_raises_probability_of_the_rewarded_completion():
    model = Qwen3(tiny_config(vocab_size=32), rngs=nnx.Rngs(0))
    cfg = GRPOConfig(lr=3e-3, temperature=1.0, row_len=16, loss=LossConfig(agg="seq-mean-token-sum"))
    trainer = GRPOTrainer(model, cfg)
    sampler = Sampler(model, num_slots=24, cache_len=16, params=SamplingParams(temperature=1.0), seed=0)
    before = _p_target(model)
    for step in range(30):
        sampler.update_weights(trainer.model)
        prompts = [p for p in PROMPTS for _ in range(8)]
        turns = sampler.generate(prompts, max_new_tokens=2)
        samples = [Sample(p + t.tokens, [0] * len(p) + [1] * len(t.tokens), [0.0] * len(p) + t.logprobs,
                          [0] * len(p) + [1] * len(t.tokens), group=i // 8, reward=float(t.tokens[0] == TARGET))
                   for i, (p, t) in enumerate(zip(prompts, turns))]
        metrics = trainer.step(samples)
        assert metrics["mismatch_abs"] < 1e-4  # the sampler's and learner's log-probabilities agree
    after = _p_target(trainer.model)
    assert before < 0.1 and after > 0.5, (before, after)
    assert trainer.compiles == 1


def test_failed_samples_are_out_of_the_loss_and_the_statistics():
    cfg = GRPOConfig(row_len=8)
    base = dict(tokens=[1, 2, 3], loss_mask=[0, 1, 1], sampler_logprobs=[0, -1, -1], sampled=[0, 1, 1], group=0)
    samples = [Sample(**base, reward=1.0), Sample(**base, reward=0.0), Sample(**base, reward=0.0, failed=True)]
    stats = step_statistics(samples, cfg)
    np.testing.assert_allclose(stats.advantages, [0.7071, -0.7071, 0.0], atol=1e-3)
    rows = make_rows(samples, stats, cfg)
    # Packed two to a row of 8: [a a a b b b . .] [c c c . . . . .]; the failed one trains nothing.
    assert rows["tokens"].shape == (2, 8)
    assert rows["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
    assert rows["loss_mask"][1].sum() == 0 and rows["loss_weights"][1].sum() == 0
    # seq-mean-token-sum over the two valid sequences: each loss token weighs 1/2.
    assert rows["loss_weights"][0].tolist() == [0, 0.5, 0.5, 0, 0.5, 0.5, 0, 0]
    assert rows["advantages"][0, :3].tolist() == pytest.approx([0.7071] * 3, abs=1e-3)


def test_kl_to_the_frozen_starting_policy_is_zero_first_then_grows():
    model = Qwen3(tiny_config(vocab_size=32), rngs=nnx.Rngs(0))
    trainer = GRPOTrainer(model, GRPOConfig(lr=1e-2, temperature=1.0, row_len=8,
                                            loss=LossConfig(kl_coef=0.1)))
    rs = np.random.RandomState(0)
    samples = [Sample(rs.randint(0, 32, 6).tolist(), [0, 0, 1, 1, 1, 1], [0.0] * 6, [0] * 6, group=i // 4,
                      reward=float(i % 2)) for i in range(8)]
    first = trainer.step(samples)
    for _ in range(5):
        last = trainer.step(samples)
    assert abs(first["kl_ref"]) < 1e-6  # the learner starts at the reference
    assert last["kl_ref"] > 1e-4  # and moves away from it; the KL term measures that
