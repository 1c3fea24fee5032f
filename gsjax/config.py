"""Configs are Python files with `get_config(preset: str | None) -> ConfigDict` (big_vision style).

On the command line they are given as `--config=configs/NAME.py[:preset]` with
`--config.a.b=value` overrides (`from_argv`); `load` does the same from Python. A key that does not
exist fails with the nearest valid names. The shipped configs live in the package (`gsjax/configs/`),
so `configs/grpo.py` is found from any folder; a file of that path under the current folder wins.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_collections


class ConfigKeyError(KeyError):
    """A config key that does not exist; the message names the nearest valid keys."""

    def __str__(self) -> str:
        return str(self.args[0])


PACKAGE_DIR = Path(__file__).resolve().parent


def shipped() -> list[str]:
    """The configs shipped with gsjax, as `--config` spells them (`configs/grpo.py`)."""
    return sorted(f"configs/{p.name}" for p in (PACKAGE_DIR / "configs").glob("*.py") if p.name != "__init__.py")


def resolve(path: str) -> Path:
    """The config file `path` names: the file itself when it exists, else for a relative path the
    shipped one (`configs/grpo.py` is `gsjax/configs/grpo.py` of the installed package)."""
    given = Path(path)
    if given.is_file():
        return given
    if not given.is_absolute() and (PACKAGE_DIR / given).is_file() and given.parts[0] == "configs":
        return PACKAGE_DIR / given
    raise FileNotFoundError(f"config file {path!r} not found (neither under {str(Path.cwd())!r} nor shipped with "
                            f"gsjax: {', '.join(shipped())})")


def module(path: str):
    """The config module of `path` (see `resolve`), executed."""
    file = resolve(path)
    module_spec = importlib.util.spec_from_file_location(f"gsjax_config_{file.stem}", file)
    mod = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(mod)
    return mod


def load(spec: str, **overrides) -> ml_collections.ConfigDict:
    """Load `path/to/config.py[:preset]`, then apply dotted-key overrides (`a__b=1` for `a.b`)."""
    path, _, preset = spec.partition(":")
    cfg = module(path).get_config(preset or None)
    for key, value in overrides.items():
        override(cfg, key.replace("__", "."), value, spec)
    return cfg


def keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted key of `cfg`, sub-configs included."""
    out = []
    for name, value in cfg.items():
        out.append(prefix + name)
        if isinstance(value, ml_collections.ConfigDict):
            out += keys(value, prefix + name + ".")
    return out


def override(cfg: ml_collections.ConfigDict, dotted: str, value: Any, source: str = "config") -> None:
    """Set `cfg.<dotted>` to `value`; a string is read as the field's type (`"3"` for an int,
    `"false"` for a bool, `"(1, 2)"` for a tuple). An unknown key names the nearest valid ones."""
    parts = dotted.split(".")
    target = cfg
    for i, part in enumerate(parts):
        if not isinstance(target, ml_collections.ConfigDict) or part not in target:
            valid = keys(cfg)
            near = difflib.get_close_matches(dotted, valid, n=3, cutoff=0.5)
            hint = f"; nearest valid keys: {', '.join(near)}" if near else f"; valid keys: {', '.join(valid)}"
            raise ConfigKeyError(f"{source} has no key {dotted!r}{hint}")
        if i < len(parts) - 1:
            target = target[part]
    current = target[parts[-1]]
    if isinstance(value, str) and not isinstance(current, str):
        value = _parse_value(value, current, dotted)
    target[parts[-1]] = value


def _parse_value(text: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"config key {key!r} is a bool; got {text!r} (expected true or false)")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"config key {key!r} expects a {type(current).__name__}; cannot read {text!r}") from e
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if current is not None and not isinstance(value, type(current)):
        if isinstance(current, tuple) and isinstance(value, list):
            return tuple(value)
        raise ValueError(f"config key {key!r} expects a {type(current).__name__}, got {text!r}")
    return value


def from_argv(argv: list[str], default: str) -> ml_collections.ConfigDict:
    """The config of a command line: `--config=path.py[:preset]` (default `default`) and any
    number of `--config.a.b=value` overrides. Anything else is an error naming it."""
    spec, sets = default, []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name == "--config" and eq:
            spec = value
        elif name.startswith("--config.") and eq:
            sets.append((name[len("--config."):], value))
        else:
            raise ValueError(f"unknown argument {arg!r}: expected --config=path.py[:preset] or --config.key=value")
    cfg = load(spec)
    for dotted, value in sets:
        override(cfg, dotted, value, spec)
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


HELP_FLAGS = ("-h", "--help")


def help_text(argv: list[str], default: str, doc: str) -> str:
    """What `--help` prints for an entry point taking a config: `doc` (its module docstring), the
    config file's own docstring and presets, then every key with its default, as a command line sets it
    (the keys of `--config=...:preset` when the command line names one)."""
    spec = next((a.partition("=")[2] for a in argv if a.startswith("--config=")), default)
    path, _, preset = spec.partition(":")
    mod = module(path)
    cfg = mod.get_config(preset or None)
    lines = [doc.strip(), "", f"config: --config={path}[:preset]  (the file: {resolve(path)})"]
    if mod.__doc__:
        lines += ["", *("  " + line if line else "" for line in mod.__doc__.strip().splitlines())]
    lines += ["", f"presets: {', '.join(getattr(mod, 'PRESETS', ('default',)))}",
              "", f"keys of {spec} with their defaults (set any with --config.KEY=VALUE):"]
    for dotted in keys(cfg):
        value = cfg
        for part in dotted.split("."):
            value = value[part]
        if not isinstance(value, ml_collections.ConfigDict):
            lines.append(f"  --config.{dotted}={value if isinstance(value, str) else repr(value)}")
    return "\n".join(lines)


def cli(argv: list[str], default: str, doc: str = "") -> ml_collections.ConfigDict:
    """`from_argv` for a `main`: a bad argument, key or value exits with its message, no traceback;
    `-h`/`--help` prints `help_text` and exits 0."""
    try:
        if any(a in HELP_FLAGS for a in argv):
            print(help_text(argv, default, doc))
            raise SystemExit(0)
        return from_argv(argv, default)
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


def changed_keys(before: dict, now: dict, ignore: Iterable[str] = (), common_only: bool = False
                 ) -> dict[str, tuple[Any, Any]]:
    """The dotted keys whose values differ between two nested config dicts (as `save` writes them),
    mapped to (before, now); a key under any of `ignore` (a dotted key or a prefix of one) is left out,
    and with `common_only` so is a key only one of them has."""
    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(before), flat(now)
    skip = tuple(ignore)
    keys = set(a) & set(b) if common_only else set(a) | set(b)
    return {k: (a.get(k), b.get(k)) for k in sorted(keys)
            if a.get(k) != b.get(k) and not any(k == i or k.startswith(i + ".") for i in skip)}

