"""The rollout backend seam: what the rollout engine needs of whatever samples its turns.

A backend holds up to `num_slots` conversations, each at most `cache_len` tokens. `start` opens a
conversation in a slot with prompt token ids and asks for one turn; `append` adds token ids (the
turn's closing, a tool observation, the next assistant header) after what the slot holds and asks
for the next turn; `step` makes progress and returns the turns that ended (tokens,
log-probabilities under the policy at the sampling temperature, finish reason); `free` releases a
slot; `update_weights` makes the backend sample from a model's current parameters, and `release`
lets go of what it holds on the learner's devices between rollouts (the JAX sampler's weights copy
and KV cache) until the next `update_weights`.

Two backends: the JAX slot sampler in this process (`gsjax.sampling.Sampler`, the default), and an
OpenAI-compatible engine over HTTP (`gsjax.sampling.served.ServedBackend`: `gsjax.serve_policy`,
vLLM or SGLang), which gets the conversation's token ids and returns token ids and
log-probabilities, and takes new weights as a Hugging Face folder it reloads from disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from gsjax.models.interface import CausalLM, Pixels
from gsjax.sampling.sampler import Turn


@runtime_checkable
class RolloutBackend(Protocol):
    num_slots: int
    cache_len: int

    def start(self, slot: int, ids: Sequence[int], max_new_tokens: int, seed: int | None = None,
              forced: Sequence[int] = (), images: Pixels | None = None) -> None: ...

    def append(self, slot: int, ids: Sequence[int], max_new_tokens: int, forced: Sequence[int] = (),
               images: Pixels | None = None) -> None: ...

    def step(self) -> list[Turn]: ...

    @property
    def busy(self) -> bool: ...

    def free(self, slot: int) -> None: ...

    def update_weights(self, model: CausalLM) -> None: ...

    def release(self) -> None: ...
