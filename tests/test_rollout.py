"""The rollout engine: slots decode while tools run; trajectories are exactly the token stream."""

import datetime
from pathlib import Path

import pytest
from flax import nnx

from gsjax.agent.rollout import RolloutEngine, Task
from gsjax.agent.tools import ToolsConfig, build_toolbox
from gsjax.agent.types import Termination
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.sampling import FinishReason, Sampler, SamplingParams, Turn
from gsjax.tokenizer import Tokenizer
from gsjax.world.build import build_world
from gsjax.world.corpus import Corpus
from gsjax.world.expert import solve
from gsjax.world.prompts import read_truth

TODAY = datetime.date(2026, 11, 23)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_world(root, seed=5, n_train_entities=40, n_eval_entities=20, n_train_prompts=10, n_eval_prompts=12)
    keys = [k for k in read_truth(root / "truth.json").values() if k.split == "eval"]
    corpus = Corpus.load(root)
    tok = Tokenizer.train_bpe([p.text for p in corpus.pages[:300]] + [k.prompt for k in keys], vocab_size=1024)
    return root, keys, tok


@pytest.fixture
def toolbox(world, tmp_path):
    with build_toolbox(ToolsConfig(backend="local", world_dir=str(world[0]), image_dir=str(tmp_path / "img"))) as tb:
        yield tb


class ScriptedSampler:
    """The Sampler's slot interface, replaying given assistant texts: it checks the engine's
    plumbing (what is inserted where) with the real tools, without a trained policy."""

    def __init__(self, tok, scripts, num_slots=3, cache_len=20000):
        self.tok, self.scripts, self.num_slots, self.cache_len = tok, scripts, num_slots, cache_len
        self.streams: dict[int, list[int]] = {}
        self.finished: list[list[int]] = []  # each freed slot's whole token stream
        self.owner: dict[int, str] = {}
        self._due: set[int] = set()
        self.max_concurrent = 0

    def start(self, slot, ids, max_new_tokens, seed=None, images=None):
        prompt = self.tok.decode(ids)
        self.owner[slot] = next(k for k in self.scripts if k in prompt)
        self.streams[slot] = list(ids)
        self._due.add(slot)

    def append(self, slot, ids, max_new_tokens, images=None):
        self.streams[slot] += ids
        self._due.add(slot)

    @property
    def busy(self):
        return bool(self._due)

    def step(self):
        self.max_concurrent = max(self.max_concurrent, len(self._due))
        turns = []
        for slot in sorted(self._due):
            text = self.scripts[self.owner[slot]].pop(0)
            ids = self.tok.encode(text)
            self.streams[slot] += ids
            turns.append(Turn(slot, ids, [-0.5] * len(ids), FinishReason.STOP_STRING, "</tool_call>"))
        self._due.clear()
        return turns

    def free(self, slot):
        self.finished.append(self.streams.pop(slot))


def test_engine_replays_expert_trajectories_through_real_tools(world, toolbox):
    root, keys, tok = world
    experts = {k.prompt: solve(k, toolbox.run, TODAY) for k in keys}
    scripts = {p: [m["content"] for m in r.episode.messages if m["role"] == "assistant"] for p, r in experts.items()}
    sampler = ScriptedSampler(tok, scripts)
    engine = RolloutEngine(sampler, tok, toolbox, today=TODAY)
    trajs = engine.run([Task(k.id, k.prompt) for k in keys])
    assert sampler.max_concurrent >= 2  # several slots decoded together
    for k, t in zip(keys, trajs):
        ref = experts[k.prompt].episode
        assert t.termination is Termination.ANSWER and t.answer.gen_prompt == ref.answer.gen_prompt
        assert [(m["role"], m["content"]) for m in t.messages] == [(m["role"], m["content"]) for m in ref.messages]
        assert len(t.tokens) == len(t.loss_mask) == len(t.sampled) == len(t.logprobs)
        # The trajectory is what the slot's cache held, plus the closing of the final answer turn.
        stream = next(s for s in sampler.finished if s == t.tokens[: len(s)])
        assert t.tokens[len(stream):] == tok.encode("<|im_end|>\n")
        # Masked-in tokens are exactly the assistant turns, each closed by <|im_end|>\n.
        trained = tok.decode([x for x, m in zip(t.tokens, t.loss_mask) if m])
        assert trained == "".join(m["content"] + "<|im_end|>\n" for m in t.messages if m["role"] == "assistant")
        assert all(lp == -0.5 for lp, s in zip(t.logprobs, t.sampled) if s)
        assert t.tool_calls == len([m for m in t.messages if m["role"] == "assistant"]) - 1
        assert t.images and all(Path(p).is_file() for p in t.images)
        assert tok.decode(t.tokens).count("<|image_pad|>") == len(t.images)


def test_engine_with_a_random_policy_ends_every_episode_cleanly(world, toolbox):
    root, keys, tok = world
    model = Qwen3(tiny_config(vocab_size=tok.vocab_size, hidden_size=64, num_heads=4), rngs=nnx.Rngs(0))
    sampler = Sampler(model, num_slots=4, cache_len=2048, params=SamplingParams(temperature=1.0),
                      stop_token_ids=[tok.eos_id, tok.token_to_id("</tool_call>")], stop_strings=["</answer>"],
                      decode=tok.decode, seed=1)
    engine = RolloutEngine(sampler, tok, toolbox, today=TODAY)
    tasks = [Task(k.id, k.prompt, g) for k in keys[:3] for g in range(2)]
    trajs = engine.run(tasks, seed=0)
    again = engine.run(tasks, seed=0)  # the same seed: the same trajectories, however slots interleave
    assert [t.tokens for t in again] == [t.tokens for t in trajs]
    trajs += engine.run(tasks, seed=1)
    # Every shape compiles once, from a fixed set: row buckets x prefill buckets, and one decode.
    assert set(sampler.compile_counts.values()) == {1}
    assert len(sampler.compile_counts) <= len(sampler.row_buckets) * len(sampler.prefill_buckets) + 1
    for t in trajs:
        assert isinstance(t.termination, Termination)
        assert len(t.tokens) == len(t.loss_mask) == len(t.logprobs)
        assert sum(t.sampled) > 0 and all(lp <= 0 for lp in t.logprobs)
        assert all(m == 1 for m, s in zip(t.loss_mask, t.sampled) if s)  # sampled tokens are trained on
        assert t.loss_mask[0] == 0 and t.tokens[: 3] == tok.render_chat(
            [{"role": "system", "content": t.messages[0]["content"]}], False).ids[:3]


def test_each_episode_is_scored_the_moment_it_ends_while_the_others_still_run(world, toolbox, tmp_path):
    """`rollout_and_score` (a GRPO step's and the held-out evaluation's rollouts): an episode's reward
    starts when its episode ends, not after the last one; the scores are those of scoring afterwards."""
    import threading
    import time

    from gsjax.bench.rollout import DelayedTools
    from gsjax.rewards.compute import RewardComputer
    from gsjax.rewards.generator import WorldGenerator
    from gsjax.rewards.judge import WorldJudgeBackend
    from gsjax.rl.loop import Prompt, reward_input, rollout_and_score

    root, keys, tok = world
    experts = {k.prompt: solve(k, toolbox.run, TODAY) for k in keys[:4]}
    scripts = {p: [m["content"] for m in r.episode.messages if m["role"] == "assistant"] for p, r in experts.items()}
    assert len({len(s) for s in scripts.values()}) > 1  # episodes of different lengths end at different times
    starts: list[float] = []

    class Timed(WorldGenerator):
        def generate(self, request, out):
            starts.append(time.perf_counter())
            return super().generate(request, out)

    tools = DelayedTools(toolbox, latency=0.25)  # each tool call 250 ms: the longer episodes end later
    engine = RolloutEngine(ScriptedSampler(tok, scripts, num_slots=4), tok, tools, today=TODAY)
    rewards = RewardComputer(Timed(root), WorldJudgeBackend(root), tmp_path / "gen")
    prompts = [Prompt(k.id, k.prompt, str(root / k.gt_image)) for k in keys[:4]]
    seen: list[tuple[int, object]] = []
    run = engine.run

    def recording_run(tasks, progress=False, seed=None, on_finished=None):
        def both(i, t):
            seen.append((i, t))
            on_finished(i, t)
        out = run(tasks, progress=progress, seed=seed, on_finished=both)
        ended.append(time.perf_counter())
        return out

    ended: list[float] = []
    engine.run = recording_run
    done = rollout_and_score(engine, rewards, prompts, [Task(p.id, p.prompt) for p in prompts], "t", seed=0)
    tools.close()
    assert sorted(i for i, _ in seen) == [0, 1, 2, 3]  # each episode once, as returned
    assert all(done.trajectories[i] is t for i, t in seen)
    assert min(starts) < ended[0] - 0.2  # the first reward began while the rollouts still ran
    again = [rewards.score(reward_input(p, t, "t")) for p, t in zip(prompts, done.trajectories)]
    assert [s.result for s in done.scored] == [s.result for s in again]
    assert done.reward_s < done.rollout_s and threading.active_count() < 50
