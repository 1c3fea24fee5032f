"""Configs are Python files with `get_config(preset: str | None) -> ConfigDict` (big_vision style).

On the command line they are given as `--config=configs/NAME.py[:preset]` with
`--config.a.b=value` overrides (ml_collections' config_flags). `load` does the same from Python.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections


def load(spec: str, **overrides) -> ml_collections.ConfigDict:
    """Load `path/to/config.py[:preset]`, then apply dotted-key overrides (`a__b=1` for `a.b`)."""
    path, _, preset = spec.partition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file {path!r} not found (from {spec!r})")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    cfg = module.get_config(preset or None)
    for key, value in overrides.items():
        node, *rest = key.split("__")
        target = cfg
        parts = [node, *rest]
        for part in parts[:-1]:
            target = target[part]
        if parts[-1] not in target:
            raise KeyError(f"config {spec!r} has no field {'.'.join(parts)!r}")
        target[parts[-1]] = value
    return cfg


_SECRET_WORDS = ("key", "token", "secret", "password")


def redacted(cfg: ml_collections.ConfigDict | dict) -> dict:
    """A plain copy of `cfg` with the value of every field whose name says it holds a secret
    replaced by "<redacted>". Fields naming an environment variable (`*_env`) are kept: configs
    hold variable names, never keys, and this is the guard for when one slips in."""
    data = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)

    def walk(node):
        if isinstance(node, dict):
            return {k: ("<redacted>" if _is_secret(k, v) else walk(v)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(walk(v) for v in node)
        return node

    return walk(data)


def _is_secret(name: str, value) -> bool:
    lowered = str(name).lower()
    return (isinstance(value, str) and bool(value) and not lowered.endswith("_env")
            and any(word in lowered for word in _SECRET_WORDS))


def save(cfg: ml_collections.ConfigDict, path: Path | str) -> Path:
    """Write the config as JSON with secrets redacted (what runs save beside their outputs)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(redacted(cfg), indent=2, sort_keys=True, default=str) + "\n")
    return path
