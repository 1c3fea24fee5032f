"""The agents an evaluation (or `gsjax.generate`, or the data pipeline) can run, behind one seam:
`run(item_id, prompt) -> AgentRun`, or `run_batch` for the batched JAX policy.

- `none`: the no-search baseline: no episode at all; the original prompt goes straight to the
  generator (text-to-image, the reference's fallback for an item without an answer).
- `expert`: the offline world's scripted expert (`gsjax.world.expert.solve`), through the same
  tools; it solves only the world's own prompts (found by id, else by prompt text).
- `policy`: a policy folder (`gsjax.agent.policy.load_policy`) run by the rollout engine, many
  items at once in the sampler's slots, seeded per item.
- `openai`: any OpenAI-compatible chat endpoint (GPT-4.1, or vLLM serving Gen-Searcher-8B) driving
  the same `Episode` state machine and toolbox: each round sends the episode's messages, a tool
  response's images as `image_url` parts after its text (reference-spec.md section 1, eval), and
  reads `choices[0].message.content` and `finish_reason`. A request that fails after the HTTP
  client's retries ends the episode with termination `error`. The key is read from the
  environment variable the config names, at each call.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from gsjax.agent.episode import Episode, RunTool
from gsjax.agent.protocol import AgentLimits
from gsjax.agent.texts import AgentTexts
from gsjax.agent.types import Answer, ImageRef, Termination

log = logging.getLogger(__name__)
BACKENDS = ("none", "expert", "policy", "openai")
NO_SEARCH = "no_search"  # the baseline's "termination": no episode ran


@dataclasses.dataclass
class AgentRun:
    termination: str  # a Termination value, or NO_SEARCH
    answer: Answer | None
    messages: list[dict[str, Any]]  # the conversation (tool responses carry "images": paths)
    shown: list[ImageRef]  # every image the tools showed, by IMG id
    tool_calls: int = 0
    error: str | None = None  # why the environment failed (termination error)
    episode: Episode | None = None  # for SFT export (expert, openai)


class Agent(Protocol):
    name: str
    batched: bool  # run_batch takes many items at once (the policy's sampler slots)

    def run(self, item_id: str, prompt: str) -> AgentRun: ...

    def run_batch(self, tasks: Sequence[tuple[str, str]]) -> list[AgentRun]: ...

    def close(self) -> None: ...


class _Single:
    batched = False

    def run_batch(self, tasks: Sequence[tuple[str, str]]) -> list[AgentRun]:
        return [self.run(i, p) for i, p in tasks]

    def close(self) -> None:
        pass


def episode_run(ep: Episode, error: str | None = None) -> AgentRun:
    calls = sum(1 for t in ep.turns if t.result is not None)
    return AgentRun(ep.termination.value if ep.termination else Termination.ERROR.value, ep.answer,
                    ep.messages, ep.registry.all(), calls, error, ep)


class NoSearchAgent(_Single):
    name = "none"

    def run(self, item_id: str, prompt: str) -> AgentRun:
        return AgentRun(NO_SEARCH, None, [{"role": "user", "content": prompt}], [])


class ExpertAgent(_Single):
    name = "expert"

    def __init__(self, world_dir: Path | str, toolbox, today: datetime.date, limits: AgentLimits,
                 top_k: int = 1, image_top_k: int = 1, texts: AgentTexts = AgentTexts()):
        from gsjax.world.prompts import read_truth

        self.keys = read_truth(Path(world_dir) / "truth.json")
        self._by_prompt = {_norm(k.prompt): k for k in self.keys.values()}
        self.toolbox, self.today, self.limits, self.texts = toolbox, today, limits, texts
        self.top_k, self.image_top_k = top_k, image_top_k

    def key_for(self, item_id: str, prompt: str):
        key = self.keys.get(str(item_id))
        if key is None or _norm(key.prompt) != _norm(prompt):
            key = self._by_prompt.get(_norm(prompt))
        return key

    def run(self, item_id: str, prompt: str) -> AgentRun:
        from gsjax.world.expert import solve

        key = self.key_for(item_id, prompt)
        if key is None:
            return AgentRun(Termination.ERROR.value, None, [{"role": "user", "content": prompt}], [],
                            error="the expert solves only the offline world's own prompts: no answer key has "
                                  f"id {item_id!r} or this prompt")
        result = solve(key, self.toolbox.run, self.today, self.limits, self.top_k, self.image_top_k,
                       texts=self.texts)
        return episode_run(result.episode)


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


class OpenAIAgent(_Single):
    name = "openai"

    def __init__(self, base_url: str, model: str, toolbox, today: datetime.date, limits: AgentLimits, *,
                 key_env: str = "OPENAI_API_KEY", temperature: float = 0.6, top_p: float = 0.9,
                 max_tokens: int = 4096, image_max_side: int = 1024, timeout_s: float = 600.0,
                 http_attempts: int = 3, texts: AgentTexts = AgentTexts()):
        from gsjax.agent.tools.http import HttpClient, HttpConfig

        if not base_url or not model:
            raise ValueError("agent.backend='openai' needs agent.base_url and agent.model")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.key_env = model, key_env
        self.toolbox, self.today, self.limits, self.texts = toolbox, today, limits, texts
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens
        self.image_max_side = image_max_side
        self._client = HttpClient(HttpConfig(connect_timeout_s=min(10.0, timeout_s), read_timeout_s=timeout_s,
                                             deadline_s=timeout_s, max_attempts=http_attempts,
                                             user_agent="gsjax-eval/0.1"))

    def __repr__(self) -> str:
        return f"OpenAIAgent(url={self.url!r}, model={self.model!r}, key_env={self.key_env!r})"

    def close(self) -> None:
        self._client.close()

    def chat_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The episode's messages in the chat API's shape: a message with images becomes its text
        followed by one image_url part (a JPEG data URL) per image."""
        from gsjax.rewards.judge_openai import encode_image

        out = []
        for m in messages:
            images = m.get("images") or []
            if not images:
                out.append({"role": m["role"], "content": m["content"]})
                continue
            parts: list[dict[str, Any]] = [{"type": "text", "text": m["content"]}]
            for path in images:
                parts.append({"type": "image_url",
                              "image_url": {"url": encode_image(path, self.image_max_side, quality=90)}})
            out.append({"role": m["role"], "content": parts})
        return out

    def complete(self, messages: list[dict[str, Any]]) -> tuple[str, str, int | None]:
        """One chat call: (text, "stop" | "length", the conversation's tokens so far as the reply's
        `usage.total_tokens` says, None when it does not). Raises HttpFailure or ValueError."""
        from gsjax.rewards.judge_openai import reply_text

        headers = {}
        if self.key_env:
            key = os.environ.get(self.key_env, "").strip()
            if not key:
                raise ValueError(f"the environment variable {self.key_env} (the agent's API key) is not set")
            headers["Authorization"] = f"Bearer {key}"
        body = {"model": self.model, "messages": self.chat_messages(messages), "temperature": self.temperature,
                "top_p": self.top_p, "max_tokens": self.max_tokens}
        data = self._client.post(self.url, headers=headers, json_body=body, trusted=True).json()
        text = reply_text(data)
        if text is None:
            raise ValueError(f"the agent's reply has no choices[0].message.content: {str(data)[:200]}")
        finish = (data["choices"][0].get("finish_reason") or "stop") if isinstance(data, dict) else "stop"
        used = data.get("usage", {}).get("total_tokens") if isinstance(data.get("usage"), dict) else None
        return text, "length" if finish == "length" else "stop", used if isinstance(used, int) else None

    def run(self, item_id: str, prompt: str) -> AgentRun:
        from gsjax.agent.tools.http import HttpFailure

        ep = Episode(prompt, self.today, self.limits, self.texts)
        while not ep.done:
            try:
                text, finish, used = self.complete(ep.messages)
            except (HttpFailure, ValueError, OSError) as e:
                ep.abort(Termination.ERROR)
                return episode_run(ep, self._client.redact(f"{type(e).__name__}: {e}"))
            step = ep.on_assistant(text, finish)
            if used is not None and used >= self.limits.max_conversation_tokens and not ep.done:
                # The conversation reached its limit (the endpoint counted it): it ends here, as a
                # policy's rollout does, instead of sending a prompt the endpoint may refuse.
                ep.abort(Termination.MAX_TOKENS)
                break
            if isinstance(step, RunTool):
                ep.on_tool_result(self.toolbox.run(step.call, ep.registry))
        return episode_run(ep)


class PolicyAgent:
    name = "policy"
    batched = True

    def __init__(self, folder: Path | str, toolbox, today: datetime.date, *, num_slots: int = 32,
                 cache_len: int = 1024, temperature: float = 0.6, top_p: float = 0.9, seed: int = 0,
                 mesh: dict | None = None, texts: AgentTexts = AgentTexts(), limits: dict[str, int] | None = None):
        """The policy in `folder`, spoken to with `texts` where they are set and with its agent.json's
        texts elsewhere; its agent.json's episode limits, except the counts of `limits` that are not 0
        (`agent.policy_limits`)."""
        from gsjax.agent.policy import load_policy
        from gsjax.agent.protocol import AgentLimits, override_limits
        from gsjax.parallel import make_mesh
        from gsjax.sampling import SamplingParams

        override_limits(AgentLimits(), limits or {}, "agent.policy_limits")  # a bad setting fails before the load
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"agent.policy {str(folder)!r} is not a policy folder (no config.json); "
                                    "train one with python -m gsjax.train")
        placed = make_mesh(dict(mesh or {"data": -1}))  # the parameters and the sampler on it
        policy = load_policy(folder, placed)
        self.policy = dataclasses.replace(policy, texts=texts.over(policy.texts),
                                          limits=override_limits(policy.limits, limits or {}, "agent.policy_limits"))
        self.limits = self.policy.limits
        sampler = self.policy.sampler(num_slots, cache_len, seed=seed, mesh=placed,
                                      sampling=SamplingParams(temperature=temperature, top_p=top_p))
        self.engine = self.policy.engine(sampler, toolbox, today)
        self.batch_size = num_slots
        self.seed = seed

    def run(self, item_id: str, prompt: str) -> AgentRun:
        return self.run_batch([(item_id, prompt)])[0]

    def run_batch(self, tasks: Sequence[tuple[str, str]]) -> list[AgentRun]:
        from gsjax.agent.rollout import Task

        trajs = self.engine.run([Task(str(i), p) for i, p in tasks], seed=self.seed)
        return [AgentRun(t.termination.value, t.answer, t.messages, list(t.shown), t.tool_calls) for t in trajs]

    def close(self) -> None:
        pass


def build_agent(cfg, toolbox, world_dir: Path | str | None, today: datetime.date) -> Agent:
    """The agent of an eval config's `agent` block."""
    backend = cfg.backend
    limits = AgentLimits(**cfg.limits.to_dict())
    texts = AgentTexts.from_files(cfg.get("texts", {}))
    if backend == "none":
        return NoSearchAgent()
    if backend == "expert":
        if not world_dir:
            raise ValueError("agent.backend='expert' needs the offline world (data.world)")
        return ExpertAgent(world_dir, toolbox, today, limits, cfg.expert.top_k, cfg.expert.image_top_k, texts)
    if backend == "policy":
        if not cfg.policy:
            raise ValueError("agent.backend='policy' needs agent.policy, a policy folder "
                             "(e.g. runs/grpo/policy_grpo written by python -m gsjax.train)")
        return PolicyAgent(cfg.policy, toolbox, today, num_slots=cfg.num_slots, cache_len=cfg.cache_len,
                           temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                           mesh=cfg.mesh.to_dict() if "mesh" in cfg else None, texts=texts,
                           limits=cfg.policy_limits.to_dict() if "policy_limits" in cfg else None)
    if backend == "openai":
        return OpenAIAgent(cfg.base_url, cfg.model, toolbox, today, limits, key_env=cfg.key_env,
                           temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                           image_max_side=cfg.image_max_side, texts=texts)
    raise ValueError(f"agent.backend must be one of {BACKENDS}, got {backend!r}")
