"""The copy-heads initialisation: a fresh tiny Qwen3 that already copies repeated spans."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from gsjax.bench.copy_init import SHAPE as BENCH_SHAPE, copy_probability, main as bench_main, repeated_spans
from gsjax.models.copy_heads import FAST_PAIRS, CopyHeads, copy_head_weights, offset_key, set_copy_heads
from gsjax.models.interface import ModelInput
from gsjax.models.qwen3 import Qwen3, rope, tiny_config
from gsjax.train import initialise

SHAPE = {**BENCH_SHAPE, "vocab_size": 512, "rope_theta": 1e6}


def test_a_fresh_model_with_copy_heads_copies_repeated_spans():
    ids, mask = repeated_spans(np.random.default_rng(0), 4, 192, 512, 40, spans=(4, 16))
    plain = Qwen3(tiny_config(**SHAPE), rngs=nnx.Rngs(0))
    primed = Qwen3(tiny_config(**SHAPE), rngs=nnx.Rngs(0))
    set_copy_heads(primed)
    before, after = copy_probability(plain, ids, mask), copy_probability(primed, ids, mask)
    assert before < 0.01  # 1 / vocabulary: nothing copied
    assert after > 0.4, after


def test_the_previous_token_key_peaks_one_position_back_under_the_models_rope():
    theta, d = 1e6, 32
    q, k = np.zeros(d, np.float32), np.zeros(d, np.float32)
    for pair in FAST_PAIRS:
        q[pair] = 1.0
        k[pair], k[pair + d // 2] = offset_key(theta, d, pair, 1)
    t = 300
    positions = np.arange(t + 1)[None]  # the key at every position up to the query's
    keys = np.asarray(rope(jnp.broadcast_to(jnp.asarray(k), (1, t + 1, 1, d)), positions, theta))[0, :, 0]
    query = np.asarray(rope(jnp.asarray(q)[None, None, None], np.array([[t]]), theta))[0, 0, 0]
    scores = keys @ query  # scores[j]: the key j positions from the start
    assert int(np.argmax(scores)) == t - 1
    assert scores[t - 1] - max(scores[t], scores[t - 2]) > 0.5


def test_only_the_circuit_and_the_zeroed_branches_change():
    model = Qwen3(tiny_config(**SHAPE), rngs=nnx.Rngs(0))
    before = np.asarray(model.layers[1].self_attn.q_proj.get_value()).copy()
    set_copy_heads(model, CopyHeads(seed=3))
    after = np.asarray(model.layers[1].self_attn.q_proj.get_value())
    # layer 1's query heads 1 and 3 are not induction heads: they keep their built values
    np.testing.assert_array_equal(after[:, 1], before[:, 1])
    np.testing.assert_array_equal(after[:, 3], before[:, 3])
    assert not np.array_equal(after[:, 0], before[:, 0])
    assert not np.asarray(model.layers[0].mlp.down_proj.get_value()).any()
    emb = np.asarray(model.embed.get_value())
    n = SHAPE["hidden_size"] - SHAPE["head_dim"] - 1
    np.testing.assert_array_equal(emb[:, n], 1.0)  # the constant dim
    assert not emb[:, n + 1:].any()  # the previous-token dims start empty


@pytest.mark.parametrize("change, message", [
    (dict(num_layers=1), "at least 2 layers"),
    (dict(num_kv_heads=1, num_heads=2), "2 key-value heads"),
    (dict(hidden_size=64), "hidden_size >= 2 \\* head_dim"),
])
def test_shapes_the_circuit_cannot_fit_are_refused(change, message):
    cfg = tiny_config(**{**SHAPE, **change})
    init = {"embed": np.zeros((cfg.vocab_size, cfg.hidden_size))}
    with pytest.raises(ValueError, match=message):
        copy_head_weights(cfg, init, CopyHeads())


@pytest.mark.parametrize("scale", [0.0, -0.3])
def test_a_written_scale_that_writes_nothing_is_refused(scale):
    cfg = tiny_config(**SHAPE)
    with pytest.raises(ValueError, match="model.copy_heads.written_scale must be > 0"):
        copy_head_weights(cfg, {"embed": np.zeros((cfg.vocab_size, cfg.hidden_size))}, CopyHeads(written_scale=scale))


def test_train_names_the_setting_it_does_not_know():
    cfg = ml_collections.ConfigDict(dict(seed=0, model=dict(tiny_init="pretrained")))
    with pytest.raises(ValueError, match="model.tiny_init='pretrained': expected 'random' or 'copy_heads'"):
        initialise(Qwen3(tiny_config(**SHAPE), rngs=nnx.Rngs(0)), cfg)


def test_the_bench_prints_the_inits_side_by_side(capsys):
    bench_main(["--steps", "2", "--every", "1", "--rows", "2", "--length", "64", "--spaces", "0.2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["step", "random", "copy_heads", "two_back", "copy_heads@sp", "two_back@sp"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    random0, copy0, two0, copy_sp, two_sp = (float(v) for v in rows[0][1:])
    assert random0 < 0.01 < 0.2 < min(copy0, two0)
    assert copy_sp < copy0 and two_sp > copy_sp  # after a space, the pair decides


def test_the_copy_heads_preset_builds_a_policy_that_copies_at_step_0():
    """configs/grpo.py:copy_heads, the measured recipe, wires the circuit into the policy train.py builds."""
    import types

    from gsjax.config import load
    from gsjax.train import tiny_model

    cfg = load("configs/grpo.py:copy_heads")
    assert (cfg.data.tokenizer_split, cfg.sft.context_weight, cfg.rl.lr) == ("capitalised", 1.0, 1e-4)
    assert cfg.model.tiny.num_layers == 4  # the two layers past the circuit start as identities
    assert cfg.tools.local_path == "name"  # its image paths show no work folder (the "_" pitfall)
    assert cfg.data.expert.recoveries == 0.5  # a mistaken call before the right one in half the SFT data
    assert cfg.data.expert.plan  # the first thought says what the picture needs, the last copies it
    assert cfg.model.copy_heads.to_dict() == {"two_back": True, "written_scale": 0.3}
    model = tiny_model(cfg, types.SimpleNamespace(vocab_size=cfg.model.tiny.vocab_size))
    ids, mask = repeated_spans(np.random.default_rng(0), 4, 192, 512, 40, spans=(4, 16))
    assert copy_probability(model, ids, mask) > 0.4


def test_the_cpu_long_preset_is_the_copy_heads_recipe_for_more_grpo_steps():
    from gsjax.config import load

    short, long = load("configs/grpo.py:copy_heads").to_dict(), load("configs/grpo.py:cpu_long").to_dict()
    assert long["rl"].pop("steps") > short["rl"].pop("steps")
    assert (long.pop("workdir"), short.pop("workdir")) == ("runs/cpulong", "runs/copyheads")
    assert long == short


def test_two_back_copies_the_token_after_a_common_one_by_the_token_before_it():
    """"A _ X ... B _ Y ... A _": after the common "_" (the space the capitalised split writes before
    each name), X follows only by the pair. Plain induction heads split between X and Y; with
    `two_back` the second head matches "A" two back and X wins."""
    from gsjax.bench.copy_init import SPACE

    rng = np.random.default_rng(0)
    a, b, x, y = (int(t) for t in rng.choice(np.arange(SPACE + 1, 512), 4, replace=False))
    def filler(n):
        return [int(t) for t in rng.integers(SPACE + 1, 512, n) if t not in (a, b, x, y)]
    head = filler(20) + [a, SPACE, x] + filler(30) + [b, SPACE, y] + filler(30)
    odds = {}  # log p(X) / p(Y) at the last position, after "A _" and after "B _"
    for two_back in (False, True):
        model = Qwen3(tiny_config(**SHAPE), rngs=nnx.Rngs(0))
        set_copy_heads(model, CopyHeads(two_back=two_back, written_scale=0.3))
        logits = np.asarray(model(ModelInput(jnp.asarray([head + [a, SPACE], head + [b, SPACE]]))))[:, -1]
        odds[two_back] = logits[:, x] - logits[:, y]
    # Plain heads see the same current token both times: the odds barely move with the token before it.
    assert abs(odds[False][0] - odds[False][1]) < 1.0, odds
    # With two_back, the token before decides: X after "A _", Y after "B _".
    assert odds[True][0] > 2.0 and odds[True][1] < -2.0, odds

def test_two_back_writes_the_token_two_positions_back_and_keeps_the_first_induction_head():
    cfg = tiny_config(**SHAPE)
    model = Qwen3(cfg, rngs=nnx.Rngs(0))
    init = {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    plain = copy_head_weights(cfg, init, CopyHeads())
    paired = copy_head_weights(cfg, init, CopyHeads(two_back=True))
    h, kv = cfg.num_heads, cfg.num_kv_heads
    first = {"q_proj": (slice(None), 0), "k_proj": (slice(None), 0), "v_proj": (slice(None), 0), "o_proj": (0,)}
    for w, at in first.items():  # layer 1's first induction head (query head 0, key-value head 0) is the same
        np.testing.assert_array_equal(paired[f"layers.1.self_attn.{w}"][at], plain[f"layers.1.self_attn.{w}"][at])
    n = cfg.hidden_size - cfg.head_dim - 1
    two = n + 1 + cfg.head_dim // 2
    o0 = paired["layers.0.self_attn.o_proj"]
    assert o0[h // kv, :, two:].any() and not plain["layers.0.self_attn.o_proj"][:, :, two:].any()


def test_train_passes_the_circuits_options_from_the_config():
    cfg = ml_collections.ConfigDict(dict(seed=0, model=dict(tiny_init="copy_heads",
                                                            copy_heads=dict(two_back=True, written_scale=0.3))))
    model = initialise(Qwen3(tiny_config(**SHAPE), rngs=nnx.Rngs(0)), cfg)
    o0 = np.asarray(model.layers[0].self_attn.o_proj.get_value())
    n = SHAPE["hidden_size"] - SHAPE["head_dim"] - 1
    two = n + 1 + SHAPE["head_dim"] // 2
    np.testing.assert_allclose(o0[0, :16, n + 1:two], 0.3 * np.eye(16))  # the previous-token head, scaled
    np.testing.assert_allclose(o0[2, :16, two:], 0.3 * np.eye(16))  # the two-back head
