"""Rollouts with a vision-language policy: the tools' images reach the sampler as pixels, each
insert's images are encoded once, and the trajectory keeps exactly what was encoded, so a full
pass over the trajectory (what the learner computes) gives the log-probabilities the sampler
recorded."""

from __future__ import annotations

import datetime

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gsjax.agent.protocol import AgentLimits
from gsjax.agent.rollout import RolloutEngine, Task
from gsjax.agent.tools import ToolsConfig, build_toolbox
from gsjax.agent.types import Termination
from gsjax.models.interface import ModelInput
from gsjax.models.losses import token_logprobs
from gsjax.models.qwen3 import tiny_config
from gsjax.models.qwen3_vl import Qwen3VL, Qwen3VLConfig, mrope_positions, vision_input
from gsjax.models.qwen3_vl_vision import tiny_vision_config
from gsjax.sampling import Sampler, SamplingParams
from gsjax.tokenizer import Tokenizer
from gsjax.world.build import build_world
from gsjax.world.corpus import Corpus
from gsjax.world.expert import solve
from gsjax.world.prompts import read_truth

TODAY = datetime.date(2026, 11, 23)
LIMITS = AgentLimits(max_pixels=32 * 32, images_per_response=3, prompt="compact")  # 16 tokens per image


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_world(root, seed=5, n_train_entities=40, n_eval_entities=20, n_train_prompts=10, n_eval_prompts=4)
    keys = [k for k in read_truth(root / "truth.json").values() if k.split == "eval"][:2]
    corpus = Corpus.load(root)
    tok = Tokenizer.train_bpe([p.text for p in corpus.pages[:300]] + [k.prompt for k in keys], vocab_size=1024)
    return root, keys, tok


def _policy(tok: Tokenizer) -> Qwen3VL:
    cfg = Qwen3VLConfig(
        text=tiny_config(vocab_size=tok.vocab_size, hidden_size=48, num_heads=4, num_kv_heads=2, head_dim=12,
                         mrope_section=(2, 2, 2)),
        vision=tiny_vision_config(out_hidden_size=48),
        image_token_id=tok.token_to_id("<|image_pad|>"), vision_start_token_id=tok.token_to_id("<|vision_start|>"),
        vision_end_token_id=tok.token_to_id("<|vision_end|>"), video_token_id=tok.vocab_size - 1,  # unused: no videos
    )
    return Qwen3VL(cfg, rngs=nnx.Rngs(0))


class ForcedTurns:
    """A real Sampler whose turns emit the expert's texts (teacher forcing): the expert's tool calls
    bring real images, and the sampler records each forced token's log-probability."""

    def __init__(self, sampler: Sampler, tok: Tokenizer, scripts: dict[str, list[str]]):
        self.sampler, self.tok, self.scripts = sampler, tok, scripts
        self.num_slots, self.cache_len = sampler.num_slots, sampler.cache_len
        self.vl_cfg = sampler.vl_cfg
        self.owner: dict[int, str] = {}

    def _next(self, slot: int) -> list[int]:
        return self.tok.encode(self.scripts[self.owner[slot]].pop(0))

    def start(self, slot, ids, max_new_tokens, seed=None, images=None):
        self.owner[slot] = next(k for k in self.scripts if k in self.tok.decode(ids))
        forced = self._next(slot)
        self.sampler.start(slot, ids, len(forced), seed=seed, forced=forced, images=images)

    def append(self, slot, ids, max_new_tokens, images=None):
        forced = self._next(slot)
        self.sampler.append(slot, ids, len(forced), forced=forced, images=images)

    def __getattr__(self, name):  # busy, step, free
        return getattr(self.sampler, name)


def test_rollouts_show_the_policy_pixels_and_the_full_pass_agrees_with_the_sampler(world, tmp_path):
    root, keys, tok = world
    model = _policy(tok)
    tools = ToolsConfig(backend="local", world_dir=str(root), image_dir=str(tmp_path / "img"))
    with build_toolbox(tools) as toolbox:
        experts = {k.prompt: solve(k, toolbox.run, TODAY, LIMITS) for k in keys}
        scripts = {p: [m["content"] for m in r.episode.messages if m["role"] == "assistant"] for p, r in experts.items()}
        sampler = Sampler(model, num_slots=2, cache_len=4096, params=SamplingParams(temperature=1.0))
        engine = RolloutEngine(ForcedTurns(sampler, tok, scripts), tok, toolbox, limits=LIMITS, today=TODAY)
        trajs = engine.run([Task(k.id, k.prompt) for k in keys])

    cfg = model.vl_cfg
    shown = 0
    for t in trajs:
        assert t.termination is Termination.ANSWER
        assert t.pixel_values is not None and len(t.image_grids) == len(t.images) > 0
        assert t.pixel_values.shape[0] == int(t.image_grids.prod(axis=1).sum())
        pads = int(np.sum(np.asarray(t.tokens) == cfg.image_token_id))
        assert pads == int(t.image_grids.prod(axis=1).sum()) // 4 and pads > len(t.images)  # one per merged patch
        shown += len(t.images)
        # What the learner computes: a full pass over the trajectory with its pixels.
        tokens = np.asarray(t.tokens)
        positions, _ = mrope_positions(tokens, t.image_grids, cfg)

        def full(pixels):
            vision = vision_input(tokens[None], pixels, t.image_grids, cfg)
            inputs = ModelInput(jnp.asarray(tokens[None]), jnp.asarray(positions[:, None]), None, vision)
            return np.asarray(token_logprobs(model, inputs))[0]

        sampled = np.asarray(t.sampled) > 0
        recorded = np.asarray(t.logprobs)[sampled]
        assert np.abs(full(t.pixel_values)[sampled] - recorded).max() < 1e-4
        # The pixels matter: other pixels, other log-probabilities of the turns after the images.
        assert np.abs(full(np.zeros_like(t.pixel_values))[sampled] - recorded).max() > 1e-3
    assert shown >= 2
    assert sampler.compile_counts["decode"] == 1
