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
