"""Flow-matching Euler sampling (diffusers' FlowMatchEulerDiscreteScheduler) as host arithmetic
plus one pure step.

The schedule is computed once on the host in float32 numpy, in the same order of operations as
diffusers, so timesteps and sigmas come out bit-identical; the step `x + (sigma_next - sigma) * v`
runs inside the jitted sampling loop. Dynamic shifting follows the edit pipeline: mu grows
linearly with the number of image tokens between (base_image_seq_len, base_shift) and
(max_image_seq_len, max_shift), and sigmas start from linspace(1, 1/n, n).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from gsjax.models.hf_io import CheckpointError, read_json


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = True
    base_shift: float = 0.5
    max_shift: float = 0.9
    base_image_seq_len: int = 256
    max_image_seq_len: int = 8192
    shift_terminal: float | None = 0.02
    time_shift_type: Literal["exponential", "linear"] = "exponential"

    def to_diffusers(self) -> dict[str, Any]:
        return {"_class_name": "FlowMatchEulerDiscreteScheduler", **dataclasses.asdict(self), "invert_sigmas": False,
                "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                "stochastic_sampling": False}


# Options of the diffusers class that gsjax does not implement, with the value it requires.
_UNSUPPORTED = {"invert_sigmas": False, "use_karras_sigmas": False, "use_exponential_sigmas": False,
                "use_beta_sigmas": False, "stochastic_sampling": False}


def scheduler_config_from_diffusers(cfg: dict[str, Any], source: str) -> SchedulerConfig:
    if cfg.get("_class_name", "FlowMatchEulerDiscreteScheduler") != "FlowMatchEulerDiscreteScheduler":
        raise CheckpointError(f"{source}: _class_name is {cfg.get('_class_name')!r}; expected "
                              "'FlowMatchEulerDiscreteScheduler'")
    for key, ok in _UNSUPPORTED.items():
        if bool(cfg.get(key, ok)) != ok:
            raise CheckpointError(f"{source}: field {key!r} is {cfg[key]!r}; gsjax supports only {ok}")
    if cfg.get("time_shift_type", "exponential") not in ("exponential", "linear"):
        raise CheckpointError(f"{source}: field 'time_shift_type' is {cfg['time_shift_type']!r}; expected "
                              "'exponential' or 'linear'")
    defaults = SchedulerConfig(use_dynamic_shifting=False, shift_terminal=None, max_shift=1.15, max_image_seq_len=4096)
    kw = {f.name: cfg.get(f.name, getattr(defaults, f.name)) for f in dataclasses.fields(SchedulerConfig)}
    return SchedulerConfig(**kw)


def load_scheduler_config(folder: str | Path) -> SchedulerConfig:
    path = Path(folder) / "scheduler_config.json"
    return scheduler_config_from_diffusers(read_json(path, "a diffusers scheduler folder"), str(path))


def calculate_shift(image_seq_len: int, cfg: SchedulerConfig) -> float:
    """mu for dynamic shifting: linear in the number of image tokens."""
    m = (cfg.max_shift - cfg.base_shift) / (cfg.max_image_seq_len - cfg.base_image_seq_len)
    b = cfg.base_shift - m * cfg.base_image_seq_len
    return image_seq_len * m + b


def schedule(cfg: SchedulerConfig, num_steps: int, image_seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps [n], sigmas [n + 1]) in float32, the last sigma 0, as the edit pipeline sets them."""
    if num_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_steps}")
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps).astype(np.float32)
    if cfg.use_dynamic_shifting:
        mu = calculate_shift(image_seq_len, cfg)
        if cfg.time_shift_type == "exponential":
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
        else:
            sigmas = mu / (mu + (1 / sigmas - 1) ** 1.0)
    else:
        sigmas = cfg.shift * sigmas / (1 + (cfg.shift - 1) * sigmas)
    if cfg.shift_terminal:
        one_minus = 1 - sigmas
        scale = one_minus[-1] / (1 - cfg.shift_terminal)
        sigmas = 1 - (one_minus / scale)
    sigmas = np.asarray(sigmas, np.float32)
    timesteps = (sigmas * np.float32(cfg.num_train_timesteps)).astype(np.float32)
    return timesteps, np.concatenate([sigmas, np.zeros(1, np.float32)])


def euler_step(velocity: jax.Array, sigma: jax.Array, sigma_next: jax.Array, sample: jax.Array) -> jax.Array:
    """One Euler step of the flow ODE, in fp32, returned in the velocity's dtype."""
    prev = sample.astype(jnp.float32) + (sigma_next - sigma) * velocity.astype(jnp.float32)
    return prev.astype(velocity.dtype)
