"""The rollout backend seam: GRPO rollouts from an OpenAI-compatible engine (`gsjax.serve_policy` over
loopback) through `ServedBackend`, token ids in and token ids and log-probabilities out, weights
pushed to the engine after each update."""

from __future__ import annotations

import datetime
import zlib

import numpy as np
import pytest
from flax import nnx

from gsjax.agent.policy import Policy, load_policy, save_policy
from gsjax.agent.protocol import AgentLimits
from gsjax.agent.rollout import RolloutEngine, Task
from gsjax.agent.tools import ToolsConfig, build_toolbox
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.rewards.compute import ScoredEpisode
from gsjax.rewards.score import scored
from gsjax.rl.loop import GRPOLoop, Prompt
from gsjax.rl.trainer import GRPOConfig, GRPOTrainer
from gsjax.sampling import SamplingParams
from gsjax.sampling.backend import RolloutBackend
from gsjax.sampling.served import ServedBackend
from gsjax.serve_policy import PolicyServer, PolicyService
from gsjax.tokenizer import Tokenizer
from gsjax.world.build import build_world
from gsjax.world.prompts import read_truth

TODAY = datetime.date(2026, 1, 1)
SAMPLING = SamplingParams(temperature=1.0)
LIMITS = AgentLimits(prompt="compact", max_tokens_per_turn=32, max_conversation_tokens=768, max_rounds=3)
SEED, SLOTS, CACHE = 3, 4, 768


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("served")
    root = build_world(base / "world", seed=0, n_train_entities=20, n_eval_entities=8, n_train_prompts=8,
                       n_eval_prompts=4).root
    keys = [k for k in read_truth(root / "truth.json").values() if k.split == "train"][:2]
    tok = Tokenizer.train_bpe([k.prompt for k in keys] * 4 + ["<think></think><tool_call></tool_call>"], 400)
    model = Qwen3(tiny_config(vocab_size=tok.vocab_size, hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=16,
                              intermediate_size=64), rngs=nnx.Rngs(0))
    folder = save_policy(Policy(model, tok, LIMITS, SAMPLING), base / "policy")
    service = PolicyService(load_policy(folder), name="policy", num_slots=SLOTS, cache_len=CACHE, seed=SEED)
    with PolicyServer(service).start() as server, \
            build_toolbox(ToolsConfig(world_dir=str(root), image_dir=str(base / "img"))) as toolbox:
        yield base, root, keys, folder, server, toolbox


def _served(setup, tmp_path, cls=ServedBackend) -> RolloutEngine:
    _, _, _, folder, server, toolbox = setup
    backend = cls(f"{server.url}", "policy", num_slots=SLOTS, sampling=SAMPLING, weights_dir=tmp_path / "weights")
    assert backend.cache_len == CACHE  # the engine's max_model_len
    return RolloutEngine(backend, load_policy(folder).tokenizer, toolbox, limits=LIMITS, today=TODAY)


def test_served_rollouts_equal_the_in_process_samplers_token_for_token(setup, tmp_path):
    _, _, keys, folder, _, toolbox = setup
    policy = load_policy(folder)
    local = policy.sampler(SLOTS, CACHE, seed=SEED, sampling=SAMPLING)
    assert isinstance(local, RolloutBackend)
    tasks = [Task(k.id, k.prompt, g) for k in keys for g in range(2)]
    mine = RolloutEngine(local, policy.tokenizer, toolbox, limits=LIMITS, today=TODAY).run(tasks, seed=0)
    engine = _served(setup, tmp_path)
    assert isinstance(engine.backend, RolloutBackend)
    theirs = engine.run(tasks, seed=0)
    assert sum(len(t.tokens) for t in theirs) > 200 and engine.backend.requests >= len(tasks)
    for a, b in zip(mine, theirs):
        assert b.tokens == a.tokens and b.loss_mask == a.loss_mask and b.termination == a.termination
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-4)


class _HashReward:
    """Rewards that differ within a group (a random policy's episodes all score 0 in the world), so
    the update moves the weights."""

    workers = 4

    def score(self, inp):
        part = (zlib.crc32(inp.name.encode()) % 5) / 4
        return ScoredEpisode(scored(part, part))


class _Stale(ServedBackend):
    def update_weights(self, model):  # never tells the engine
        self.reloads += 1


def _two_steps(setup, tmp_path, cls) -> tuple[dict, dict, ServedBackend]:
    _, root, keys, folder, server, _ = setup
    engine = _served(setup, tmp_path, cls)
    trainer = GRPOTrainer(load_policy(folder).model, GRPOConfig(lr=1e-2, temperature=1.0, row_len=CACHE))
    prompts = [Prompt(k.id, k.prompt, str(root / k.gt_image)) for k in keys]
    loop = GRPOLoop(trainer, engine, _HashReward(), group_size=2)
    first = loop.step(prompts, seed=1)
    second = loop.step(prompts, seed=2)
    return first, second, engine.backend


def test_a_grpo_step_pushes_its_weights_to_the_engine_and_the_next_rollouts_match_the_learner(setup, tmp_path):
    server = setup[4]
    reloads = server.service.reloads
    first, second, backend = _two_steps(setup, tmp_path, ServedBackend)
    assert first["update_skipped"] == 0.0  # the first step moved the weights
    assert backend.reloads == 2 and server.service.reloads == reloads + 2  # before each step's rollouts
    assert first["mismatch_abs"] < 1e-3 and second["mismatch_abs"] < 1e-3  # engine vs learner, logged
    stale_first, stale_second, _ = _two_steps(setup, tmp_path / "stale", _Stale)
    print(f"mismatch_abs: step 1 {first['mismatch_abs']:.2e}, step 2 {second['mismatch_abs']:.2e}; "
          f"engine left on the old weights, step 2 {stale_second['mismatch_abs']:.2e}")
    # Control: an engine left on the old weights is caught by the same metric.
    assert stale_second["mismatch_abs"] > 10 * second["mismatch_abs"] and stale_second["mismatch_abs"] > 1e-3
    with pytest.raises(ValueError, match="cannot force tokens"):
        backend.start(0, [1, 2], 4, forced=[3])


def test_the_training_config_names_the_engine_or_says_what_is_missing(tmp_path):
    from gsjax import config as config_lib
    from gsjax.train import rollout_backend

    cfg = config_lib.load("configs/grpo.py:test", rl__rollout_backend="openai")
    with pytest.raises(ValueError, match="needs rl.rollout_url"):
        rollout_backend(cfg, None, tmp_path, None)
    cfg = config_lib.load("configs/grpo.py:test", rl__rollout_backend="vllm")
    with pytest.raises(ValueError, match="must be one of jax, openai, got 'vllm'"):
        rollout_backend(cfg, None, tmp_path, None)
