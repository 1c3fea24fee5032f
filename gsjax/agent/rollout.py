"""Prompts -> trajectories: the multi-turn rollout engine.

Each task gets a slot of the rollout backend (`gsjax.sampling.backend`: the jitted JAX sampler, or
an OpenAI-compatible engine) and an `Episode`. Slots decode together; when a
slot's turn ends, its text goes to the episode: a tool call runs on the toolbox's thread pool
while the other slots keep decoding, and when it returns its observation (closing the assistant
turn, the tool response, the next assistant header) is appended to that slot's KV cache without
re-encoding the conversation. A finished slot takes the next task.

A trajectory's tokens are exactly what the sampler's cache held: prompt and observation tokens
(loss mask 0), sampled tokens (mask 1, with the sampler's log-probabilities), and the forced
`<|im_end|>\\n` that closes each assistant turn (mask 1 as in the reference, log-probability 0,
`sampled` 0: the learner recomputes old log-probabilities itself).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from gsjax.agent.episode import Continue, Episode, RunTool, Turn as EpisodeTurn, message_text
from gsjax.agent.protocol import AgentLimits
from gsjax.agent.texts import AgentTexts
from gsjax.agent.types import Answer, ImageRef, Termination, ToolResult
from gsjax.agent.vision import PolicyImages, join
from gsjax.models.interface import Pixels
from gsjax.sampling import FinishReason, Turn
from gsjax.sampling.backend import RolloutBackend
from gsjax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Task:
    prompt_id: str
    prompt: str
    group_index: int = 0  # which of the G samples of this prompt


@dataclasses.dataclass
class Trajectory:
    task: Task
    tokens: list[int]
    loss_mask: list[int]  # 1 = assistant token (trained on)
    sampled: list[int]  # 1 = drawn by the sampler (its logprob is meaningful)
    logprobs: list[float]  # the sampler's, aligned with tokens; 0 where sampled is 0
    messages: list[dict[str, Any]]
    images: list[str]  # attached image paths, in the order they enter the token stream
    shown: list[ImageRef]  # every image the tools showed (the trajectory's registry)
    termination: Termination
    answer: Answer | None
    tool_calls: int
    tool_errors: int
    # What a vision-language policy was shown, exactly as encoded: the processor's pixel rows
    # [P, patch_dim] and patch grids [n, 3] of the images in token-stream order (None: no pixels).
    pixel_values: np.ndarray | None = None
    image_grids: np.ndarray | None = None
    # The log-probabilities under the distribution each token was drawn from (after top-k / top-p),
    # aligned with tokens, 0 where sampled is 0; None: as `logprobs` (no truncation).
    behavior_logprobs: list[float] | None = None
    # The episode's model calls, one per assistant message: what each was read as (tool call, answer,
    # format error) and the tool's result where one ran (`gsjax.agent.episode.Turn`).
    turns: list[EpisodeTurn] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Live:
    task: Task
    episode: Episode
    rendered: int  # episode messages already in the token stream
    tokens: list[int]
    loss_mask: list[int]
    sampled: list[int]
    logprobs: list[float]
    prompt_len: int = 0  # tokens of the first prompt (responses are counted after it)
    tool_calls: int = 0
    tool_errors: int = 0
    future: cf.Future | None = None
    closing: list[int] = dataclasses.field(default_factory=list)  # ends the last turn; not yet in the slot
    pixels: list[Pixels | None] = dataclasses.field(default_factory=list)  # what each insert showed
    behavior: list[float] = dataclasses.field(default_factory=list)

    def add(self, ids: Sequence[int], mask: int, sampled: int = 0, logprobs: Sequence[float] | None = None,
            behavior: Sequence[float] | None = None) -> None:
        self.tokens += ids
        self.loss_mask += [mask] * len(ids)
        self.sampled += [sampled] * len(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
        self.behavior += list(behavior) if behavior is not None else [0.0] * len(ids)


class RolloutEngine:
    def __init__(self, backend: RolloutBackend, tokenizer: Tokenizer, toolbox, *, limits: AgentLimits = AgentLimits(),
                 today: datetime.date | None = None, image_pad_tokens: int = 1, texts: AgentTexts = AgentTexts()):
        self.backend, self.tok, self.toolbox = backend, tokenizer, toolbox
        self.limits = limits
        self.texts = texts
        self.today = today or datetime.date.today()
        self.image_pad_tokens = image_pad_tokens
        # A vision-language policy sees the pixels (one placeholder per merged patch); a text-only
        # one sees `image_pad_tokens` placeholders per image.
        vl = getattr(backend, "vl_cfg", None)  # other rollout backends: text-only
        self.images = None if vl is None else PolicyImages.for_tower(vl.vision, limits.max_pixels)
        self._close_turn = tokenizer.encode("<|im_end|>\n")
        self._newline = tokenizer.encode("\n")
        self._turn_budget = min(limits.max_tokens_per_turn, backend.cache_len - 1)
        self._seed: int | None = None

    def sync_weights(self, model) -> None:
        """Roll out with `model`'s current parameters from now on (after a learner update)."""
        self.backend.update_weights(model)

    def release(self) -> None:
        """Free the backend's device memory until the next `sync_weights` (during the update)."""
        self.backend.release()

    def run(self, tasks: Sequence[Task], progress: bool = False, seed: int | None = None,
            on_finished: Callable[[int, Trajectory], None] | None = None) -> list[Trajectory]:
        """Trajectories for `tasks`, in order. With `seed`, each task's tokens are drawn from a seed
        made of it and the task's prompt id and group index: the same call gives the same
        trajectories however slots and tool latencies interleave. `on_finished(i, trajectory)` is
        called the moment task i's episode ends (its reward can start while the others decode)."""
        self._seed = seed
        todo = list(enumerate(tasks))[::-1]
        live: dict[int, tuple[int, _Live]] = {}
        done: dict[int, Trajectory] = {}
        bar = tqdm(total=len(tasks), desc="rollouts", disable=not progress, leave=False)
        while todo or live:
            for slot in range(self.backend.num_slots):
                if todo and slot not in live:
                    idx, task = todo.pop()
                    live[slot] = (idx, self._begin(slot, task))
            for slot, (_, lv) in list(live.items()):  # tool results that came back
                if lv.future is not None and lv.future.done():
                    self._after_tool(slot, lv, lv.future.result())
            for turn in self.backend.step() if self.backend.busy else ():
                self._after_turn(turn.slot, live[turn.slot][1], turn)
            for slot, (idx, lv) in list(live.items()):
                if lv.episode.done:
                    done[idx] = self._finish(lv)
                    if on_finished is not None:
                        on_finished(idx, done[idx])
                    self.backend.free(slot)
                    del live[slot]
                    bar.update(1)
            waiting = [lv.future for _, lv in live.values() if lv.future is not None]
            if waiting and not self.backend.busy and not any(f.done() for f in waiting):
                cf.wait(waiting, return_when=cf.FIRST_COMPLETED)  # nothing to decode: wait for a tool
        bar.close()
        return [done[i] for i in range(len(tasks))]

    # ------------------------------------------------------------------ per slot

    def _begin(self, slot: int, task: Task) -> _Live:
        episode = Episode(task.prompt, self.today, self.limits, self.texts)
        lv = _Live(task, episode, len(episode.messages), [], [], [], [])
        rendered = self._render(lv, episode.messages)
        if rendered is None:
            return lv
        prompt, pixels = rendered
        lv.prompt_len = len(prompt)
        lv.add(prompt, 0)
        if self._budget(lv) < 1:
            episode.abort(Termination.MAX_TOKENS)
            return lv
        lv.pixels.append(pixels)
        self.backend.start(slot, prompt, self._budget(lv), seed=self._task_seed(task), images=pixels)
        return lv

    def _render(self, lv: _Live, messages) -> tuple[list[int], Pixels | None] | None:
        """Token ids of `messages` (with the next assistant header) and the pixels of their
        images; None (the episode ended with ERROR) when an image cannot be read."""
        pixels, pads = None, self.image_pad_tokens
        if self.images is not None:
            try:
                pixels = self.images.pixels([p for m in messages for p in (m.get("images") or [])])
            except ValueError:  # a file the tool had validated, no longer readable: end the episode
                lv.episode.abort(Termination.ERROR)
                return None
            pads = self.images.token_counts(pixels)
        ids = self.tok.render_chat([_plain(m) for m in messages], add_generation_prompt=True,
                                   image_pad_tokens=pads).ids
        return ids, pixels

    def _after_turn(self, slot: int, lv: _Live, turn: Turn) -> None:
        lv.add(turn.tokens, 1, 1, turn.logprobs, turn.behavior_logprobs or turn.logprobs)
        if turn.finish is FinishReason.CACHE_FULL:
            lv.episode.abort(Termination.MAX_TOKENS)
            return
        ended_turn = bool(turn.tokens) and turn.tokens[-1] == self.tok.eos_id
        lv.closing = self._newline if ended_turn else self._close_turn
        lv.add(lv.closing, 1)
        text = self.tok.decode(turn.tokens, skip_special_tokens=False)
        if ended_turn and text.endswith("<|im_end|>"):
            text = text[: -len("<|im_end|>")]
        before = len(lv.episode.messages)
        step = lv.episode.on_assistant(text, "length" if turn.finish is FinishReason.LENGTH else "stop")
        lv.rendered = before + 1  # the assistant message is in the stream already
        if isinstance(step, RunTool):
            lv.tool_calls += 1
            lv.future = self.toolbox.submit(step.call, lv.episode.registry)
        elif isinstance(step, Continue):
            self._continue(slot, lv)

    def _after_tool(self, slot: int, lv: _Live, result: ToolResult) -> None:
        lv.future = None
        lv.tool_errors += result.error is not None
        lv.episode.on_tool_result(result)
        self._continue(slot, lv)

    def _continue(self, slot: int, lv: _Live) -> None:
        """Append the episode's new user messages and the next assistant header to the slot."""
        new = lv.episode.messages[lv.rendered:]
        lv.rendered = len(lv.episode.messages)
        rendered = self._render(lv, new)
        if rendered is None:
            return
        ids, pixels = rendered
        if self._budget(lv, extra=len(ids)) < 1:  # the policy never sees what does not fit
            lv.episode.abort(Termination.MAX_TOKENS)
            return
        lv.add(ids, 0)
        lv.pixels.append(pixels)
        self.backend.append(slot, lv.closing + ids, self._budget(lv), images=pixels)

    def _task_seed(self, task: Task) -> int | None:
        if self._seed is None:
            return None
        return zlib.crc32(f"{self._seed}/{task.prompt_id}/{task.group_index}".encode())

    def _budget(self, lv: _Live, extra: int = 0) -> int:
        """Tokens the next turn may sample after the conversation's tokens (and `extra` more about
        to be added), so that with the turn's closing `<|im_end|>\\n` it stays within the conversation
        limit, the response limit and the cache."""
        limit = min(self.limits.max_conversation_tokens, self.backend.cache_len,
                    lv.prompt_len + self.limits.max_response_tokens)
        return min(self._turn_budget, limit - len(lv.tokens) - extra - len(self._close_turn))

    def _finish(self, lv: _Live) -> Trajectory:
        ep = lv.episode
        images = [p for m in ep.messages for p in (m.get("images") or [])]
        pixels = join(lv.pixels)
        return Trajectory(lv.task, lv.tokens, lv.loss_mask, lv.sampled, lv.logprobs, ep.messages, images,
                          ep.registry.all(), ep.termination, ep.answer, lv.tool_calls, lv.tool_errors,
                          None if pixels is None else pixels.values, None if pixels is None else pixels.grids,
                          lv.behavior, list(ep.turns))


def _plain(message: dict[str, Any]) -> dict[str, str]:
    return {"role": message["role"], "content": message_text(message)}

