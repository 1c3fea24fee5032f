"""Continuous batching of independent requests over the slot sampler (the policy server's engine).

One thread owns the `Sampler`. Requests (prompt token ids, a token budget, a seed) wait in a queue;
whenever a slot is free the next request starts in it, so requests that arrive while others decode
join the running batch at the next step instead of waiting for it to finish. Each request's tokens
depend only on its prompt, the sampler's seed and its own seed (the sampler's per-position draws), not
on what else runs beside it. A streaming request is handed its new tokens after every decode chunk.

`reload(fn)` stops admitting requests, lets the running ones finish, calls `fn` (e.g. new weights)
with no request in flight, and resumes. An error inside the sampler fails the requests that were
running (their callers get the exception); the engine goes on with the next ones.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence

from gsjax.sampling.sampler import Sampler, Turn

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Request:
    ids: list[int]
    max_new_tokens: int
    seed: int | None
    on_tokens: Callable[[list[int]], None] | None  # streaming: each chunk's new tokens
    future: cf.Future
    sent: int = 0  # tokens already streamed


class Batcher:
    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self._cond = threading.Condition()
        self._waiting: collections.deque[_Request] = collections.deque()
        self._running: dict[int, _Request] = {}
        self._reloads: collections.deque[tuple[Callable[[], object], cf.Future]] = collections.deque()
        self._closed = False
        self.served = 0
        self.most_running = 0  # the largest number of requests decoded together so far
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, ids: Sequence[int], max_new_tokens: int, seed: int | None = None,
               on_tokens: Callable[[list[int]], None] | None = None) -> cf.Future:
        """A future of the request's `Turn` (its tokens, log-probabilities and finish reason)."""
        if not ids:
            raise ValueError("a request needs at least one prompt token")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        request = _Request([int(i) for i in ids], int(max_new_tokens), seed, on_tokens, cf.Future())
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append(request)
            self._cond.notify_all()
        return request.future

    def reload(self, fn: Callable[[], object], timeout: float | None = None) -> object:
        """Run `fn` between requests (none running; the waiting ones start after it); its result."""
        future: cf.Future = cf.Future()
        with self._cond:
            self._reloads.append((fn, future))
            self._cond.notify_all()
        return future.result(timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        error = RuntimeError("the batcher closed before this request ran")
        for request in list(self._waiting) + list(self._running.values()):
            if not request.future.done():
                request.future.set_exception(error)

    # ------------------------------------------------------------------ the engine thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._running and not self._reloads and not self._waiting:
                    self._cond.wait()
                if self._closed:
                    return
                if self._reloads and not self._running:
                    fn, future = self._reloads.popleft()
                else:
                    fn = None
                    if not self._reloads:  # a reload waits for the running requests; nothing new starts
                        self._admit()
            if fn is not None:
                try:
                    future.set_result(fn())
                except Exception as e:  # reported to the caller of reload
                    future.set_exception(e)
                continue
            if self._running:
                self._step()

    def _admit(self) -> None:
        for slot in self.sampler.free_slots():
            if not self._waiting:
                break
            if slot in self._running:
                continue
            request = self._waiting.popleft()
            if not request.future.set_running_or_notify_cancel():
                continue
            try:
                self.sampler.start(slot, request.ids, request.max_new_tokens, seed=request.seed)
            except Exception as e:  # e.g. a prompt the cache cannot hold
                self.sampler.free(slot)
                request.future.set_exception(e)
                continue
            self._running[slot] = request
        self.most_running = max(self.most_running, len(self._running))

    def _step(self) -> None:
        try:
            turns = self.sampler.step()
        except Exception as e:
            log.exception("the sampler failed; failing the %d running requests", len(self._running))
            with self._cond:
                for slot, request in self._running.items():
                    self.sampler.free(slot)
                    request.future.set_exception(e)
                self._running.clear()
            return
        done: dict[int, Turn] = {t.slot: t for t in turns}
        with self._cond:
            for slot, request in list(self._running.items()):
                tokens = done[slot].tokens if slot in done else self.sampler.drawn(slot)
                if request.on_tokens is not None and len(tokens) > request.sent:
                    try:
                        request.on_tokens(tokens[request.sent:])
                    except Exception:  # a streaming client that went away: its request still ends
                        log.debug("a streaming callback failed", exc_info=True)
                        request.on_tokens = None
                    request.sent = len(tokens)
                if slot in done:
                    self.sampler.free(slot)
                    del self._running[slot]
                    self.served += 1
                    request.future.set_result(done[slot])
