"""A rollout backend over an OpenAI-compatible engine: `gsjax.serve_policy`, vLLM or SGLang.

Each slot's conversation is kept here as token ids. A turn is one `POST {base}/v1/completions` with
the whole conversation as the prompt (token ids in, never re-tokenized text), `return_token_ids` and
`logprobs`, and the conversation's seed; the reply's token ids and log-probabilities become the
`Turn`, and its tokens join the conversation, so the next turn's prompt is exactly the stream the
trajectory records. Requests of different slots run concurrently (one thread each), so the engine
batches them. An engine with prefix caching (vLLM, SGLang) does not recompute what earlier turns
held; gsjax's own server prefills each request whole.

The log-probabilities must be the policy's at the sampling temperature, as the learner recomputes
them (`gsjax.serve_policy` returns those; vLLM needs `--logprobs-mode processed_logprobs`). The GRPO
step logs the gap between these and the learner's own (`mismatch_abs`, `mismatch_max`).

Weights: `update_weights(model)` writes the model as a Hugging Face folder (`weights_dir`) and asks
the engine to load it (`POST {base}/update_weights_from_disk`, SGLang's endpoint, which
`gsjax.serve_policy` also serves), so the next turns sample from the learner's parameters.

The sampling settings are the engine's: this backend sends `sampling` with every request, and an
engine that samples otherwise refuses them (gsjax's server) rather than sample something else.
A vision-language policy's images cannot be sent this way (text-only policies).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gsjax.models.interface import CausalLM, Pixels
from gsjax.sampling.logits import SamplingParams
from gsjax.sampling.sampler import FinishReason, Turn

POLL_S = 0.02  # how long `step` waits for a reply before it lets the engine look at its tool calls


class ServedBackend:
    def __init__(self, base_url: str, model: str, *, num_slots: int, sampling: SamplingParams,
                 weights_dir: Path | str, key_env: str = "", timeout_s: float = 600.0, http_attempts: int = 3,
                 cache_len: int = 0):
        from gsjax.agent.tools.http import HttpClient, HttpConfig

        if not base_url or not model:
            raise ValueError("a served rollout backend needs the engine's base URL and model name")
        self.base = base_url.rstrip("/")
        self.model, self.key_env, self.sampling = model, key_env, sampling
        self.num_slots = num_slots
        self.weights_dir = Path(weights_dir)
        self._client = HttpClient(HttpConfig(connect_timeout_s=min(10.0, timeout_s), read_timeout_s=timeout_s,
                                             deadline_s=timeout_s, max_attempts=http_attempts,
                                             max_in_flight=max(num_slots, 1) + 2, user_agent="gsjax-rollout/0.1"))
        self.cache_len = cache_len or self._served_length()
        self._pool = cf.ThreadPoolExecutor(max_workers=num_slots, thread_name_prefix="served-rollout")
        self._tokens: dict[int, list[int]] = {}
        self._seeds: dict[int, int | None] = {}
        self._pending: dict[int, cf.Future] = {}
        self.requests = 0
        self.reloads = 0

    def __repr__(self) -> str:
        return f"ServedBackend(base={self.base!r}, model={self.model!r}, slots={self.num_slots})"

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    # ------------------------------------------------------------------ RolloutBackend

    def start(self, slot: int, ids: Sequence[int], max_new_tokens: int, seed: int | None = None,
              forced: Sequence[int] = (), images: Pixels | None = None) -> None:
        self._check(slot, forced, images)
        self._tokens[slot], self._seeds[slot] = [int(t) for t in ids], seed
        self._submit(slot, max_new_tokens)

    def append(self, slot: int, ids: Sequence[int], max_new_tokens: int, forced: Sequence[int] = (),
               images: Pixels | None = None) -> None:
        self._check(slot, forced, images)
        if slot not in self._tokens:
            raise ValueError(f"slot {slot} holds no conversation; use start()")
        self._tokens[slot] += [int(t) for t in ids]
        self._submit(slot, max_new_tokens)

    def step(self) -> list[Turn]:
        """The turns whose replies came back (waiting at most POLL_S for one). A request that failed
        raises here, with the engine's reason."""
        if not self._pending:
            return []
        cf.wait(list(self._pending.values()), timeout=POLL_S, return_when=cf.FIRST_COMPLETED)
        turns = []
        for slot, fut in list(self._pending.items()):
            if fut.done():
                del self._pending[slot]
                turn = fut.result()
                self._tokens[slot] += turn.tokens
                turns.append(turn)
        return turns

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def free(self, slot: int) -> None:
        self._tokens.pop(slot, None)
        self._seeds.pop(slot, None)
        fut = self._pending.pop(slot, None)
        if fut is not None:
            fut.cancel()

    def update_weights(self, model: CausalLM) -> None:
        """Write `model` as a Hugging Face folder and have the engine load it (between turns: no
        request is in flight when the rollout engine calls this)."""
        from gsjax.models.hf_io import save_model

        if self._pending:
            raise RuntimeError("update_weights while turns are in flight; call it between rollouts")
        save_model(model, self.weights_dir)
        reply = self._post("/update_weights_from_disk", {"model_path": str(self.weights_dir.resolve())})
        if isinstance(reply, dict) and reply.get("success") is False:
            raise RuntimeError(f"{self.base} refused the weights in {self.weights_dir}: {reply.get('message')}")
        self.reloads += 1

    def release(self) -> None:
        """Nothing to free here: the engine's memory is its own."""

    # ------------------------------------------------------------------ HTTP

    def _check(self, slot: int, forced: Sequence[int], images: Pixels | None) -> None:
        if forced:
            raise ValueError("a served backend cannot force tokens (teacher forcing runs on the JAX sampler)")
        if images is not None:
            raise ValueError("a served backend rolls out text-only policies (images cannot be sent as token ids)")
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} is out of range (0..{self.num_slots - 1})")
        if slot in self._pending:
            raise ValueError(f"slot {slot} is still generating; append after its turn ends")

    def _submit(self, slot: int, max_new_tokens: int) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        prompt = list(self._tokens[slot])
        self._pending[slot] = self._pool.submit(self._turn, slot, prompt, self._seeds[slot], max_new_tokens)

    def _headers(self) -> dict[str, str]:
        if not self.key_env:
            return {}
        key = os.environ.get(self.key_env, "").strip()
        if not key:
            raise ValueError(f"the environment variable {self.key_env} (the rollout engine's API key) is not set")
        return {"Authorization": f"Bearer {key}"}

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._client.post(self.base + path, headers=self._headers(), json_body=body, trusted=True).json()

    def _served_length(self) -> int:
        """The engine's longest conversation (`max_model_len` of /v1/models, as vLLM reports it)."""
        data = self._client.get(self.base + "/v1/models", headers=self._headers(), trusted=True).json()
        for entry in data.get("data", []) if isinstance(data, dict) else []:
            if entry.get("id") == self.model and isinstance(entry.get("max_model_len"), int):
                return entry["max_model_len"]
        raise ValueError(f"{self.base}/v1/models lists no {self.model!r} with its max_model_len; give cache_len")

    def _turn(self, slot: int, prompt: list[int], seed: int | None, max_new_tokens: int) -> Turn:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_new_tokens,
                                "temperature": self.sampling.temperature, "top_p": self.sampling.top_p,
                                "logprobs": 1, "return_token_ids": True}
        if self.sampling.top_k:
            body["top_k"] = self.sampling.top_k
        if seed is not None:
            body["seed"] = seed
        data = self._post("/v1/completions", body)
        self.requests += 1
        try:
            choice = data["choices"][0]
            tokens = [int(t) for t in choice["token_ids"]]
            logprobs = [float(x) for x in choice["logprobs"]["token_logprobs"]]
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ValueError(f"{self.base}/v1/completions replied without token_ids and logprobs.token_logprobs "
                             f"({type(e).__name__}: {str(data)[:200]})") from None
        if len(tokens) != len(logprobs):
            raise ValueError(f"{self.base}/v1/completions replied {len(tokens)} token ids and {len(logprobs)} logprobs")
        stop = choice.get("stop_reason")
        if choice.get("finish_reason") == "length":
            full = len(prompt) + len(tokens) + 1 >= self.cache_len
            finish = FinishReason.CACHE_FULL if full else FinishReason.LENGTH
        else:
            finish = FinishReason.STOP_STRING if isinstance(stop, str) else FinishReason.STOP_TOKEN
        return Turn(slot, tokens, logprobs, finish, stop)
