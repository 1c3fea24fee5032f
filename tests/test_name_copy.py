"""gsjax.bench.name_copy: where the assistant writes a name in an expert trajectory, and the scores."""

import datetime

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gsjax.agent.policy import Policy
from gsjax.agent.tools import ToolsConfig, build_toolbox
from gsjax.bench.name_copy import Probe, probes, score
from gsjax.models.interface import ModelInput
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.tokenizer import Tokenizer
from gsjax.world.build import build_world
from gsjax.world.expert import is_correct, solve_split, written_text


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_world(root, seed=3, n_train_entities=40, n_eval_entities=12, n_train_prompts=20, n_eval_prompts=6)
    with build_toolbox(ToolsConfig(backend="local", world_dir=str(root), image_dir=str(root / "img"))) as tb:
        results = solve_split(root, "eval", tb, datetime.date(2026, 1, 1), progress=False)
    return [r for r in results if is_correct(r)]


@pytest.mark.parametrize("split", ["qwen", "capitalised"])
def test_probes_mark_every_name_the_assistant_writes(solved, split):
    texts = [m["content"] for r in solved for m in r.episode.messages]
    tok = Tokenizer.train_bpe(texts, 600, split=split)
    items = probes(tok, [r.episode for r in solved], [r.key.names for r in solved], [r.key.scene for r in solved])
    assert len(items) == len(solved)
    for item, r in zip(items, solved):
        assistant = "".join(m["content"] for m in r.episode.messages if m["role"] == "assistant")
        expected = sum(assistant.count(n) for n in r.key.names)
        assert expected >= 2 and len(item.name_tokens) == expected  # thoughts, queries, the answer
        for toks in item.name_tokens:
            assert all(item.mask[t] for t in toks)
            assert any(n in tok.decode([item.ids[t] for t in toks]) for n in r.key.names)
        # The scene word of the answer: after every thought and query, written by the assistant.
        scene = tok.decode([item.ids[t] for t in item.scene_tokens])
        assert scene.strip().lower() == r.key.scene
        before = tok.decode(item.ids[:item.scene_tokens[0]])
        assert "<answer>" in before[before.rindex("assistant"):]  # in the last turn's answer
        assert all(item.mask[t] for t in item.scene_tokens)


def test_scores_count_greedy_guesses_on_the_names():
    tok = Tokenizer.train_bpe(["the Begodrath Voyager"] * 5, 300)
    model = Qwen3(tiny_config(vocab_size=tok.vocab_size), rngs=nnx.Rngs(0))
    ids = np.random.RandomState(0).randint(12, tok.vocab_size, 40).tolist()
    policy = Policy(model, tok)
    greedy = np.asarray(model.logits(model.hidden_states(ModelInput(jnp.asarray([ids])))).argmax(-1))[0]
    # Make tokens 10..12 what the model guesses, 20..22 not: one name right, one wrong.
    for t in (10, 11, 12):
        ids[t] = int(greedy[t - 1])
        greedy = np.asarray(model.logits(model.hidden_states(ModelInput(jnp.asarray([ids])))).argmax(-1))[0]
    for t in (20, 21, 22):
        ids[t] = (int(greedy[t - 1]) + 1 - 12) % (tok.vocab_size - 12) + 12
        greedy = np.asarray(model.logits(model.hidden_states(ModelInput(jnp.asarray([ids])))).argmax(-1))[0]
    mask = [0] * 5 + [1] * 35
    s = score(policy, [Probe(ids, mask, [[10, 11, 12], [20, 21, 22]], [10, 11], [[20, 21], [10, 11, 12]]),
                       Probe(ids, mask, [], [21, 22], [[11, 12]])], bucket=64)
    assert s["names"] == 2 and s["names_whole"] == 0.5 and s["name_token_accuracy"] == 0.5
    assert s["scenes"] == 2 and s["scene_whole"] == 0.5
    assert s["texts"] == 3 and s["text_whole"] == 2 / 3
    assert 0 < s["assistant_nll"] < 2 * np.log(tok.vocab_size)


def test_probes_mark_each_copy_of_the_text_the_assistant_writes(solved):
    """The text a prompt asks for (a motto, a code) where the assistant writes it: the last thought's
    quote and the answer (the expert here quotes it in both)."""
    with_text = [(r, written_text(r.episode.answer)) for r in solved if r.key.text]
    assert with_text
    texts = [m["content"] for r in solved for m in r.episode.messages]
    tok = Tokenizer.train_bpe(texts, 600, split="capitalised")
    items = probes(tok, [r.episode for r, _ in with_text], [r.key.names for r, _ in with_text],
                   [r.key.scene for r, _ in with_text], [text for _, text in with_text])
    for item, (r, text) in zip(items, with_text):
        assert text.upper() == r.key.text.upper()  # the key's text, as the answer writes it
        assistant = "".join(m["content"] for m in r.episode.messages if m["role"] == "assistant")
        assert len(item.text_tokens) == assistant.count(f'the text "{text}"') + assistant.count(f'the text \\"{text}') == 2
        for toks in item.text_tokens:
            assert text in tok.decode([item.ids[t] for t in toks])
            assert all(item.mask[t] for t in toks)
    plain = probes(tok, [r.episode for r, _ in with_text], [r.key.names for r, _ in with_text])
    assert all(not p.text_tokens for p in plain)  # no texts given: none marked
