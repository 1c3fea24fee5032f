"""SFT: packing keeps examples apart, the loss sees assistant tokens only, and the loss falls on
expert trajectories."""

import datetime

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gsjax.agent.tools import ToolsConfig, build_toolbox
from gsjax.models.interface import ModelInput
from gsjax.models.losses import token_logprobs
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.sft.data import Encoded, batches, encode, pack
from gsjax.sft.trainer import SFTConfig, SFTTrainer
from gsjax.tokenizer import Tokenizer
from gsjax.world.build import build_world
from gsjax.world.corpus import Corpus
from gsjax.world.expert import solve_split, to_sft_example


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_world(root, seed=2, n_train_entities=60, n_eval_entities=10, n_train_prompts=40, n_eval_prompts=5)
    with build_toolbox(ToolsConfig(backend="local", world_dir=str(root), image_dir=str(root / "img"))) as tb:
        results = solve_split(root, "train", tb, datetime.date(2026, 11, 23), progress=False)
    examples = [to_sft_example(r.episode) for r in results]
    corpus = Corpus.load(root)
    tok = Tokenizer.train_bpe([p.text for p in corpus.pages] + [m.content for e in examples for m in e.messages],
                              vocab_size=1024)
    return tok, examples


def test_packed_rows_score_each_example_as_if_alone():
    model = Qwen3(tiny_config(vocab_size=64), rngs=nnx.Rngs(0))
    rs = np.random.RandomState(0)
    a = Encoded(rs.randint(0, 64, 9).tolist(), [0] * 4 + [1] * 5)
    b = Encoded(rs.randint(0, 64, 7).tolist(), [0] * 3 + [1] * 4)
    batch = pack([a, b], row_len=20)
    assert batch.tokens.shape == (1, 20) and batch.segment_ids[0].tolist() == [1] * 9 + [2] * 7 + [0] * 4
    packed = np.asarray(token_logprobs(model, ModelInput(jnp.asarray(batch.tokens), jnp.asarray(batch.positions),
                                                         jnp.asarray(batch.segment_ids))))[0]
    alone_b = np.asarray(token_logprobs(model, ModelInput(jnp.asarray([b.ids]))))[0]
    np.testing.assert_allclose(packed[10:16], alone_b[1:], atol=1e-5)  # b's tokens after its first
    assert batch.loss_mask[0].tolist() == a.mask + b.mask + [0] * 4
    with pytest.raises(ValueError, match="does not fit a row of 4"):
        pack([a], row_len=4)


def test_loss_mask_covers_exactly_the_assistant_turns(data):
    tok, examples = data
    enc = encode(tok, examples[0], max_len=10_000)
    trained = tok.decode([t for t, m in zip(enc.ids, enc.mask) if m])
    assistant = [m.content for m in examples[0].messages if m.role == "assistant"]
    assert trained == "".join(a + "<|im_end|>\n" for a in assistant)


def test_context_weight_trains_on_what_the_policy_reads_except_images(data):
    tok, examples = data
    example = next(e for e in examples if "<image>" in "".join(m.content for m in e.messages))
    own = encode(tok, example, max_len=10_000)
    both = encode(tok, example, max_len=10_000, context_weight=0.25)
    assert both.ids == own.ids
    image_ids = {tok.token_to_id(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")}
    assert image_ids & set(own.ids)
    for i, m, w in zip(own.ids, own.mask, both.mask):
        assert w == (1.0 if m else 0.0 if i in image_ids else 0.25), (tok.decode([i]), m, w)
    read = tok.decode([t for t, m, w in zip(own.ids, own.mask, both.mask) if w == 0.25])
    assert example.messages[1].content in read  # the prompt, and the tools' results
    assert next(m.content for m in example.messages if m.role == "user" and "tool_response" in m.content
                ).replace("<image>", "") in read
    assert encode(tok, example, max_len=10_000, context_weight=0.0).mask == own.mask


def test_an_untrained_assistant_turn_weighs_0_even_with_context_weight(data):
    import dataclasses

    tok, examples = data
    example = examples[0]
    turn = next(i for i, m in enumerate(example.messages) if m.role == "assistant")
    messages = list(example.messages)
    messages[turn] = dataclasses.replace(messages[turn], train=False)
    marked = dataclasses.replace(example, messages=tuple(messages))
    own, off = encode(tok, example, max_len=10_000, context_weight=0.25), encode(tok, marked, max_len=10_000,
                                                                                   context_weight=0.25)
    assert off.ids == own.ids  # the same tokens: only what is learned from them changes
    changed = [i for i, (a, b) in enumerate(zip(own.mask, off.mask)) if a != b]
    assert tok.decode([off.ids[i] for i in changed]) == messages[turn].content + "<|im_end|>\n"
    assert all(own.mask[i] == 1.0 and off.mask[i] == 0.0 for i in changed)
    assert encode(tok, marked, max_len=10_000).mask == [m if i not in changed else 0.0
                                                         for i, m in enumerate(encode(tok, example, max_len=10_000).mask)]


def test_sft_loss_falls_on_expert_trajectories(data):
    tok, examples = data
    encoded = [encode(tok, e, max_len=1024) for e in examples]
    model = Qwen3(tiny_config(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=256), rngs=nnx.Rngs(0))
    trainer = SFTTrainer(model, SFTConfig(steps=40, lr=3e-3, warmup_frac=0.1))
    # 2 rows a step (4 took the suite 40 s more): the last losses are 0.53 of the first here
    losses = trainer.fit(batches(encoded, row_len=1024, rows_per_batch=2, seed=0), progress=False)
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), (losses[:3], losses[-5:])
    assert trainer.compiles == 1
