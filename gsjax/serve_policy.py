"""Serve a policy folder over an OpenAI-compatible chat API, with continuous batching.

    python -m gsjax.serve_policy --policy runs/grpo/policy_grpo --port 8001
    python -m gsjax.eval --config=configs/eval_knowgen.py:openai ... \
        --config.agent.base_url=http://127.0.0.1:8001/v1 --config.agent.model=policy_grpo --config.agent.key_env=

Endpoints:
  POST /v1/chat/completions   messages -> the policy's chat template -> one assistant turn; streaming
                              (`"stream": true`, server-sent events ending in `data: [DONE]`) or not.
                              `"logprobs": true` gives each sampled token's log-probability under the
                              policy at the server's temperature (what the GRPO learner recomputes);
                              `"return_token_ids": true` adds `prompt_token_ids` and each choice's
                              `token_ids`, as vLLM returns them (`"return_tokens_as_token_ids": true`
                              names logprob tokens `token_id:N`). `seed` fixes the draws: a request
                              samples the same tokens whatever else the server is decoding.
  POST /v1/completions        one prompt, text or token ids (what `gsjax.sampling.served.ServedBackend`
                              sends for rollouts), not streamed; `logprobs`, `return_token_ids`,
                              `stop_reason` as vLLM returns them.
  POST /update_weights_from_disk   `{"model_path": DIR}`: load a Hugging Face folder of the same
                              architecture and sample from it from now on (SGLang's endpoint); the
                              running requests finish on the old weights first, none mixes both.
  GET /v1/models, GET /health

Sampling settings are the server's (`--temperature`, `--top-p`, `--top-k`; default: the policy's
agent.json): they are compiled into the sampler. A request may repeat them or leave them out; one
asking for other values is refused (400) naming the field and the server's value, never silently
sampled otherwise. Requests run `--num-slots` at a time, each in a cache of `--cache-len` tokens
(prompt and answer). Image parts of a message become the policy's image placeholder, as a text-only
policy is shown images in training; a vision-language policy is refused image inputs here for now.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from gsjax.agent.policy import Policy, load_policy
from gsjax.fileio import BackgroundServer
from gsjax.httpd import OwnedServer, json_reply, serve_until_stopped
from gsjax.models.interface import VisionLM
from gsjax.sampling import FinishReason, SamplingParams, Turn
from gsjax.sampling.batcher import Batcher

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 2**20
ROLES = ("system", "user", "assistant", "tool")


class ApiError(ValueError):
    """A request the API refuses: the status and message go back to the client."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]  # {"role", "content"} with one "<image>" marker per image
    max_tokens: int | None
    seed: int | None
    stream: bool
    include_usage: bool
    logprobs: bool
    stop: tuple[str, ...]
    return_token_ids: bool
    tokens_as_ids: bool


def _typed(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ApiError(f"'{key}' must be {names}, got {json.dumps(value)[:60]}", param=key)
    return value


def message_text(message: Any, index: int) -> dict[str, str]:
    """One chat message as the chat template takes it: text parts joined, each image part one
    `<image>` marker in front (where gsjax's episodes put a message's images)."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ApiError(f"{where} must be an object with 'role' and 'content'", param="messages")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise ApiError(f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}", param="messages")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise ApiError(f"{where}.content must be a string or a list of parts", param="messages")
    texts, images = [], 0
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images += 1
        else:
            raise ApiError(f"{where}.content[{j}] must be a text or image_url part", param="messages")
    return {"role": role, "content": "<image>" * images + "".join(texts)}


def _check_sampling(body: dict[str, Any], sampling: SamplingParams) -> None:
    """A request may repeat the server's sampling settings or leave them out, nothing else."""
    wanted = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}
    for key, value in wanted.items():
        given = _typed(body, key, (int, float), None)
        if given is not None and not (key == "top_k" and given in (0, -1) and value == 0) and abs(given - value) > 1e-6:
            raise ApiError(f"'{key}' is {given}, but this server samples at {key}={value} (compiled into its "
                           f"sampler; start it with --{key.replace('_', '-')} to change it)", param=key)
    if _typed(body, "n", int, 1) != 1:
        raise ApiError("'n' must be 1 (send one request per sample)", param="n")


def _check_model(body: dict[str, Any], model: str) -> None:
    asked = _typed(body, "model", str, model)
    if asked != model:
        raise ApiError(f"the model {asked!r} does not exist; this server serves {model!r}", 404, "model")


def _max_tokens(body: dict[str, Any]) -> int | None:
    max_tokens = _typed(body, "max_completion_tokens", int, None) or _typed(body, "max_tokens", int, None)
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(f"'max_tokens' must be >= 1, got {max_tokens}", param="max_tokens")
    return max_tokens


@dataclasses.dataclass(frozen=True)
class CompletionRequest:
    prompt: list[int] | str  # token ids (what a rollout backend sends) or text
    max_tokens: int | None
    seed: int | None
    logprobs: bool
    return_token_ids: bool


def parse_completion(body: Any, model: str, sampling: SamplingParams) -> CompletionRequest:
    """A /v1/completions body (one prompt: text or token ids, not streamed), checked."""
    if not isinstance(body, dict):
        raise ApiError(f"the body is a JSON {type(body).__name__}, expected an object")
    _check_model(body, model)
    _check_sampling(body, sampling)
    prompt = body.get("prompt")
    ids = isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    if not (ids or (isinstance(prompt, str) and prompt)):
        raise ApiError("'prompt' is required: a non-empty string or list of token ids (one prompt per request)",
                       param="prompt")
    if _typed(body, "stream", bool, False):
        raise ApiError("'stream' is not served for /v1/completions (use /v1/chat/completions)", param="stream")
    if _typed(body, "echo", bool, False):
        raise ApiError("'echo' is not supported", param="echo")
    logprobs = _typed(body, "logprobs", int, None)
    if logprobs is not None and logprobs > 1:
        raise ApiError("'logprobs' above 1 is not supported (only the sampled token's)", param="logprobs")
    return CompletionRequest(list(prompt) if ids else prompt, _max_tokens(body), _typed(body, "seed", int, None),
                             logprobs is not None, _typed(body, "return_token_ids", bool, False))


def parse_chat(body: Any, model: str, sampling: SamplingParams) -> ChatRequest:
    """A /v1/chat/completions body, checked; ApiError names the field that is wrong."""
    if not isinstance(body, dict):
        raise ApiError(f"the body is a JSON {type(body).__name__}, expected an object")
    _check_model(body, model)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("'messages' is required: a non-empty list of {role, content}", param="messages")
    _check_sampling(body, sampling)
    if _typed(body, "top_logprobs", int, 0) != 0:
        raise ApiError("'top_logprobs' is not supported (only the sampled token's log-probability)", param="top_logprobs")
    max_tokens = _max_tokens(body)
    stop = _typed(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) and s for s in stop):
        raise ApiError("'stop' must be a string or a list of non-empty strings", param="stop")
    options = _typed(body, "stream_options", dict, {})
    return ChatRequest(
        messages=[message_text(m, i) for i, m in enumerate(messages)], max_tokens=max_tokens,
        seed=_typed(body, "seed", int, None), stream=_typed(body, "stream", bool, False),
        include_usage=bool(options.get("include_usage", False)), logprobs=_typed(body, "logprobs", bool, False),
        stop=tuple(stop), return_token_ids=_typed(body, "return_token_ids", bool, False),
        tokens_as_ids=_typed(body, "return_tokens_as_token_ids", bool, False))


class PolicyService:
    """The policy, its sampler under continuous batching, and the chat API's logic (no HTTP)."""

    def __init__(self, policy: Policy, *, name: str, num_slots: int = 8, cache_len: int = 4096, seed: int = 0,
                 sampling: SamplingParams | None = None):
        self.policy, self.name = policy, name
        self.sampling = sampling or policy.sampling
        self.sampler = policy.sampler(num_slots, cache_len, seed=seed, sampling=self.sampling)
        self.batcher = Batcher(self.sampler)
        self.reloads = 0

    def close(self) -> None:
        self.batcher.close()

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        if isinstance(self.policy.model, VisionLM) and any("<image>" in m["content"] for m in request.messages):
            raise ApiError("image inputs to a vision-language policy are not served yet (send text only)",
                           param="messages")
        return self.fits(self.policy.tokenizer.render_chat(request.messages, add_generation_prompt=True).ids,
                         "messages")

    def fits(self, ids: list[int], param: str) -> list[int]:
        """`ids`, or ApiError when the cache cannot hold them and one sampled token."""
        vocab = self.policy.model.cfg.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise ApiError(f"a prompt token id is outside the vocabulary (0..{vocab - 1})", param=param)
        if len(ids) + 1 > self.sampler.cache_len:
            raise ApiError(f"the prompt is {len(ids)} tokens; this server's cache holds {self.sampler.cache_len} "
                           "(prompt and answer; start it with a larger --cache-len)", param=param)
        return ids

    def budget(self, request: ChatRequest | CompletionRequest, prompt: list[int]) -> int:
        room = self.sampler.cache_len - 1 - len(prompt)
        return min(request.max_tokens or room, room)

    def text(self, tokens: list[int]) -> str:
        """The content of sampled tokens: the turn's end-of-message token is not part of it."""
        if tokens and tokens[-1] == self.policy.tokenizer.eos_id:
            tokens = tokens[:-1]
        return self.policy.tokenizer.decode(tokens, skip_special_tokens=False)

    def logprob_entries(self, request: ChatRequest, tokens: list[int], logprobs: list[float]) -> list[dict]:
        tok = self.policy.tokenizer
        out = []
        for t, lp in zip(tokens, logprobs):
            text = tok.decode([t], skip_special_tokens=False)
            out.append({"token": f"token_id:{t}" if request.tokens_as_ids else text, "logprob": float(lp),
                        "bytes": list(text.encode("utf-8")), "top_logprobs": []})
        return out

    def completion(self, request: ChatRequest, prompt: list[int], turn: Turn) -> dict[str, Any]:
        content, finish = cut_at_stop(self.text(turn.tokens), request.stop, finish_reason(turn))
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                                  "finish_reason": finish, "logprobs": None}
        if request.logprobs:
            choice["logprobs"] = {"content": self.logprob_entries(request, turn.tokens, turn.logprobs)}
        if request.return_token_ids:
            choice["token_ids"] = list(turn.tokens)
        out = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
               "model": self.name, "choices": [choice],
               "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(turn.tokens),
                         "total_tokens": len(prompt) + len(turn.tokens)}}
        if request.return_token_ids:
            out["prompt_token_ids"] = prompt
        return out

    def text_completion(self, request: CompletionRequest) -> dict[str, Any]:
        """A /v1/completions reply: the sampled token ids and their log-probabilities as vLLM returns
        them (`token_ids`, `logprobs.token_logprobs`), `stop_reason` the stop string or token id."""
        prompt = request.prompt if isinstance(request.prompt, list) else self.policy.tokenizer.encode(request.prompt)
        self.fits(prompt, "prompt")
        turn = self.batcher.submit(prompt, self.budget(request, prompt), request.seed).result()
        tok = self.policy.tokenizer
        choice: dict[str, Any] = {"index": 0, "text": self.text(turn.tokens), "finish_reason": finish_reason(turn),
                                  "stop_reason": turn.stop, "logprobs": None}
        if request.logprobs:
            choice["logprobs"] = {"tokens": [tok.decode([t]) for t in turn.tokens],
                                  "token_logprobs": [float(x) for x in turn.logprobs],
                                  "top_logprobs": None, "text_offset": None}
        if request.return_token_ids:
            choice["token_ids"], choice["prompt_token_ids"] = list(turn.tokens), prompt
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.name, "choices": [choice],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(turn.tokens),
                          "total_tokens": len(prompt) + len(turn.tokens)}}

    def reload(self, folder: str) -> str:
        """Sample from the weights in `folder` (same architecture) once the running requests end."""
        from gsjax.models.hf_io import load_model

        path = Path(folder)
        if not (path / "config.json").is_file():
            raise ApiError(f"model_path {folder!r} is not a Hugging Face folder (no config.json)", param="model_path")
        model = load_model(path)
        if model.cfg != self.policy.model.cfg:
            raise ApiError(f"model_path {folder!r} holds another architecture than the one served", param="model_path")
        self.batcher.reload(lambda: self.sampler.update_weights(model))
        self.reloads += 1
        return f"weights loaded from {folder}"


def finish_reason(turn: Turn) -> str:
    return "length" if turn.finish in (FinishReason.LENGTH, FinishReason.CACHE_FULL) else "stop"


def cut_at_stop(text: str, stops: tuple[str, ...], finish: str) -> tuple[str, str]:
    """The request's own stop strings cut the content where the first one starts (not included, as
    OpenAI's API does); the finish reason is then "stop"."""
    hits = [text.find(s) for s in stops if s in text]
    return (text[:min(hits)], "stop") if hits else (text, finish)


class PolicyServer(BackgroundServer):
    def __init__(self, service: PolicyService, *, host: str = "127.0.0.1", port: int = 0):
        self.service = service
        self._http = OwnedServer((host, port), self)
        self.port = self._http.server_address[1]
        self.url = f"http://{host}:{self.port}"

    def stop(self) -> None:
        super().stop()
        self.service.close()

    reply = staticmethod(json_reply)

    @staticmethod
    def error(h: BaseHTTPRequestHandler, e: ApiError) -> None:
        kind = "not_found_error" if e.status == 404 else "invalid_request_error"
        PolicyServer.reply(h, e.status, {"error": {"message": str(e), "type": kind, "param": e.param,
                                                   "code": e.status}})

    def handle_get(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0].rstrip("/")
        if path == "/v1/models":
            self.reply(h, 200, {"object": "list", "data": [{"id": self.service.name, "object": "model",
                                                            "owned_by": "gsjax", "created": 0,
                                                            "max_model_len": self.service.sampler.cache_len}]})
        elif path == "/health":
            self.reply(h, 200, {"status": "ok"})
        else:
            self.error(h, ApiError(f"unknown path {h.path}; GET /v1/models or /health", 404))

    def _body(self, h: BaseHTTPRequestHandler) -> Any:
        length = int(h.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            h.close_connection = True
            raise ApiError(f"the body is {length} bytes; at most {MAX_BODY_BYTES} are accepted", 413)
        try:
            return json.loads(h.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(f"the body is not JSON ({e})") from None

    def handle_post(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0].rstrip("/")
        try:
            if path == "/v1/chat/completions":
                self._chat(h, self._body(h))
            elif path == "/v1/completions":
                request = parse_completion(self._body(h), self.service.name, self.service.sampling)
                self.reply(h, 200, self.service.text_completion(request))
            elif path == "/update_weights_from_disk":
                body = self._body(h)
                folder = body.get("model_path") if isinstance(body, dict) else None
                if not isinstance(folder, str) or not folder:
                    raise ApiError("'model_path' is required: a Hugging Face folder", param="model_path")
                self.reply(h, 200, {"success": True, "message": self.service.reload(folder)})
            else:
                raise ApiError(f"unknown path {h.path}; POST /v1/chat/completions, /v1/completions or "
                               "/update_weights_from_disk", 404)
        except ApiError as e:
            self.error(h, e)
        except Exception as e:  # a sampler or loading failure: reported, the server stays up
            log.exception("request failed")
            self.reply(h, 500, {"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error",
                                          "param": None, "code": 500}})

    def _chat(self, h: BaseHTTPRequestHandler, body: Any) -> None:
        service = self.service
        request = parse_chat(body, service.name, service.sampling)
        prompt = service.prompt_ids(request)
        budget = service.budget(request, prompt)
        if not request.stream:
            turn = service.batcher.submit(prompt, budget, request.seed).result()
            self.reply(h, 200, service.completion(request, prompt, turn))
            return
        _Stream(h, service, request, prompt).run(budget)


class _Stream:
    """One streamed completion: server-sent `chat.completion.chunk` events, then `data: [DONE]`."""

    def __init__(self, h: BaseHTTPRequestHandler, service: PolicyService, request: ChatRequest, prompt: list[int]):
        self.h, self.service, self.request, self.prompt = h, service, request, prompt
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.tokens: list[int] = []
        self.text = ""  # content sent so far
        self.stopped = False  # a request stop string was reached: nothing more is sent
        self.lock = threading.Lock()

    def event(self, payload: dict[str, Any] | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self.h.wfile.write(f"data: {data}\n\n".encode())
        self.h.wfile.flush()

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.service.name, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                                         "logprobs": None, **extra}]}

    def on_tokens(self, new: list[int], logprobs: list[float] | None = None, final: bool = False) -> None:
        """Send `new` and what it adds to the content. Until the turn ends, text from the first
        undecodable character on waits (it may be a UTF-8 character whose bytes are still coming);
        everything before it is final, so the pieces add up to the whole completion's content."""
        with self.lock:
            if self.stopped or not (new or final):
                return
            self.tokens += new
            full, finish = cut_at_stop(self.service.text(self.tokens), self.request.stop, "")
            if not final and not finish and (held := full.find("\ufffd", len(self.text))) >= 0:
                full = full[:held]
            delta = full[len(self.text):]
            extra: dict[str, Any] = {"token_ids": new} if self.request.return_token_ids and new else {}
            if delta or extra:
                chunk = self.chunk({"content": delta} if delta else {}, **extra)
                if self.request.logprobs and logprobs is not None:
                    chunk["choices"][0]["logprobs"] = {
                        "content": self.service.logprob_entries(self.request, new, logprobs)}
                self.event(chunk)
            self.text = full
            self.stopped = finish == "stop"

    def run(self, budget: int) -> None:
        h = self.h
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        try:
            first = self.chunk({"role": "assistant", "content": ""})
            if self.request.return_token_ids:
                first["prompt_token_ids"] = self.prompt
            self.event(first)
            # Tokens reach the client per decode chunk; log-probabilities come with the whole turn, so
            # with logprobs the tokens are sent once the turn ends (each chunk still one event per step).
            stream = None if self.request.logprobs else self.on_tokens
            turn = self.service.batcher.submit(self.prompt, budget, self.request.seed, stream).result()
            if self.request.logprobs:
                self.on_tokens(turn.tokens, turn.logprobs, final=True)
            else:
                self.on_tokens(turn.tokens[len(self.tokens):], final=True)
            _, finish = cut_at_stop(self.service.text(turn.tokens), self.request.stop, finish_reason(turn))
            self.event(self.chunk({}, finish))
            if self.request.include_usage:
                n = len(turn.tokens)
                self.event({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                            "model": self.service.name, "choices": [],
                            "usage": {"prompt_tokens": len(self.prompt), "completion_tokens": n,
                                      "total_tokens": len(self.prompt) + n}})
            self.event("[DONE]")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gsjax.serve_policy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="a policy folder (python -m gsjax.train writes "
                        "runs/grpo/policy_grpo) or any Hugging Face Qwen3 folder with tokenizer.json")
    parser.add_argument("--name", default="", help="the model name clients send (default: the folder's name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--num-slots", type=int, default=8, help="requests decoded together")
    parser.add_argument("--cache-len", type=int, default=4096, help="tokens per request (prompt and answer)")
    parser.add_argument("--temperature", type=float, default=None, help="default: the policy's agent.json")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (with each request's own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        policy = load_policy(args.policy)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: --policy {args.policy}: {e}") from None
    base = policy.sampling
    sampling = SamplingParams(temperature=base.temperature if args.temperature is None else args.temperature,
                              top_p=base.top_p if args.top_p is None else args.top_p,
                              top_k=base.top_k if args.top_k is None else args.top_k)
    service = PolicyService(policy, name=args.name or Path(args.policy).resolve().name, num_slots=args.num_slots,
                            cache_len=args.cache_len, seed=args.seed, sampling=sampling)
    server = PolicyServer(service, host=args.host, port=args.port).start()
    log.info("serving %s at %s/v1 (%s; %d slots x %d tokens)", service.name, server.url, sampling,
             args.num_slots, args.cache_len)
    serve_until_stopped(server)


if __name__ == "__main__":
    main()
