"""A policy on disk and in memory: the model, its tokenizer and the agent settings it was trained
with, so that training, evaluation and `gsjax.generate` run it the same way.

A policy folder is a Hugging Face checkpoint folder (`config.json`, safetensors, `tokenizer.json`)
plus `agent.json`: the episode limits and prompt style (`AgentLimits`), the sampling settings,
how the tools' results were shown to it (`local_path`, `ToolsConfig.local_path`) and the texts it
was spoken to with where they were not gsjax's own (`AgentTexts`). Real checkpoints without
`agent.json` load with the reference's defaults and gsjax's texts.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

from jax.sharding import Mesh

from gsjax.agent.protocol import AgentLimits
from gsjax.agent.rollout import RolloutEngine
from gsjax.agent.texts import AgentTexts
from gsjax.fileio import atomic_write
from gsjax.models.hf_io import load_model, save_model
from gsjax.models.interface import CausalLM
from gsjax.parallel import barrier, is_primary
from gsjax.sampling import Sampler, SamplingParams
from gsjax.sampling.backend import RolloutBackend
from gsjax.tokenizer import Tokenizer

AGENT_FILE = "agent.json"
STOP_STRINGS = ("</answer>",)  # </tool_call> is a single token: a stop token id


@dataclasses.dataclass
class Policy:
    model: CausalLM
    tokenizer: Tokenizer
    limits: AgentLimits = AgentLimits()
    sampling: SamplingParams = SamplingParams(temperature=0.7, top_p=0.95)  # the reference's rollout
    local_path: str = "full"  # the image search's local_path as the policy was trained to read it
    texts: AgentTexts = AgentTexts()  # the system prompt and the loop's messages, where not gsjax's own

    def sampler(self, num_slots: int, cache_len: int, *, seed: int = 0, mesh: Mesh | None = None,
                sampling: SamplingParams | None = None, **kwargs) -> Sampler:
        """A slot sampler that stops where an assistant turn ends."""
        tok = self.tokenizer
        stops = [tok.eos_id] + [tok.token_to_id(t) for t in ("</tool_call>",) if _has(tok, t)]
        return Sampler(self.model, num_slots=num_slots, cache_len=cache_len, params=sampling or self.sampling,
                       stop_token_ids=stops, stop_strings=STOP_STRINGS, decode=tok.decode, seed=seed, mesh=mesh,
                       **kwargs)

    def engine(self, backend: RolloutBackend, toolbox, today: datetime.date | None = None) -> RolloutEngine:
        """The rollout engine over `backend` (this policy's `sampler`, or a served engine's `ServedBackend`)."""
        return RolloutEngine(backend, self.tokenizer, toolbox, limits=self.limits, today=today, texts=self.texts)


def _has(tok: Tokenizer, token: str) -> bool:
    try:
        tok.token_to_id(token)
    except KeyError:
        return False
    return True


def save_policy(policy: Policy, folder: str | Path) -> Path:
    """Write the policy folder (`agent.json` last: its presence means the folder is complete).
    Every process takes part in gathering the parameters; process 0 writes, the others wait."""
    folder = Path(folder)
    save_model(policy.model, folder)
    if is_primary():
        policy.tokenizer.save(folder)
        settings = {"limits": dataclasses.asdict(policy.limits), "sampling": dataclasses.asdict(policy.sampling),
                    "tools": {"local_path": policy.local_path}, "texts": policy.texts.recorded()}
        atomic_write(folder / AGENT_FILE, (json.dumps(settings, indent=2) + "\n").encode())
    barrier(f"save_policy {folder}")
    return folder


def load_policy(folder: str | Path, mesh: Mesh | None = None, *, progress: bool = False, **run) -> Policy:
    """A policy folder's model on `mesh`; `run` sets how the model runs (`hf_io.RUN_FIELDS`:
    dtypes, scanned layers, remat, attention)."""
    folder = Path(folder)
    model = load_model(folder, mesh, progress=progress, **run)
    tokenizer = Tokenizer.from_pretrained(folder)
    file = folder / AGENT_FILE
    if not file.is_file():
        return Policy(model, tokenizer)
    settings = _agent_settings(file)
    try:
        limits = AgentLimits(**settings.get("limits", {}))
        sampling = SamplingParams(**settings.get("sampling", {}))
        texts = AgentTexts(**settings.get("texts", {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{str(file)!r}: expected {{'limits': AgentLimits fields, 'sampling': SamplingParams "
                         f"fields, 'texts': AgentTexts fields}}: {e}") from e
    return Policy(model, tokenizer, limits, sampling, recorded_local_path(folder), texts)


def _agent_settings(file: Path) -> dict:
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(file)!r}: not valid JSON: {e}") from e
    if not isinstance(settings, dict):
        raise ValueError(f"{str(file)!r}: expected a JSON object, got {type(settings).__name__}")
    return settings


def recorded_local_path(folder: str | Path) -> str:
    """How the policy in `folder` was shown the image search's local_path ("full" when its
    agent.json does not say, as a real checkpoint's)."""
    from gsjax.agent.tools.image_search import LOCAL_PATHS

    file = Path(folder) / AGENT_FILE
    if not file.is_file():
        return "full"
    value = _agent_settings(file).get("tools", {}).get("local_path", "full")
    if value not in LOCAL_PATHS:
        raise ValueError(f"{str(file)!r}: tools.local_path must be one of {LOCAL_PATHS}, got {value!r}")
    return value
