"""Hugging Face checkpoint folders in and out: config.json + safetensors (single file or sharded).

Loading reads one safetensors file at a time, checks every tensor's name and shape against the
model the config describes, converts it to gsjax's layout and places it on the mesh with the
sharding its logical axes give. Everything is checked before the model is assembled, so a bad
folder raises an error naming the tensor or field and nothing half-loaded is ever returned.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from gsjax.models.layout import CheckpointError, TensorMap, same, transposed
from gsjax.models.qwen3 import QWEN3_8B, Qwen3, Qwen3Config
from gsjax.models.qwen3_vl import QWEN3VL_8B, Qwen3VL, Qwen3VLConfig
from gsjax.models.qwen3_vl_vision import VisionConfig, vision_tensor_layout
from gsjax.parallel import logical_to_spec

VL_ARCHITECTURE = "Qwen3VLForConditionalGeneration"
SUPPORTED_ARCHITECTURES = {"Qwen3ForCausalLM": "qwen3", "Qwen2ForCausalLM": "qwen2", VL_ARCHITECTURE: "qwen3_vl"}
ModelConfig = Qwen3Config | Qwen3VLConfig
Model = Qwen3 | Qwen3VL
ARCHITECTURES: dict[str, ModelConfig] = {"qwen3_8b": QWEN3_8B, "qwen3vl_8b": QWEN3VL_8B}  # planning without a folder
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers some exporters write that carry no learned state.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ----------------------------------------------------------------------------- config


def config_from_hf(hf: dict[str, Any], source: str = "config.json", **overrides: Any) -> ModelConfig:
    """Translate a Hugging Face config dict into a Qwen3Config (causal LMs) or a Qwen3VLConfig,
    naming any field that is wrong; `overrides` set RUN_FIELDS (of the decoder, and a vision
    tower's: `split_run`)."""
    archs = hf.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise CheckpointError(
            f"{source}: field 'architectures' is {archs!r}; expected one of {sorted(SUPPORTED_ARCHITECTURES)}"
        )
    family = SUPPORTED_ARCHITECTURES[arch]
    decoder_run, tower_run = split_run(overrides)
    if family != "qwen3_vl":
        return _decoder_config(hf, source, family, bool(hf.get("tie_word_embeddings", False)), **decoder_run)
    if not isinstance(hf.get("text_config"), dict) or not isinstance(hf.get("vision_config"), dict):
        raise CheckpointError(f"{source}: a {arch} config needs 'text_config' and 'vision_config' objects")
    text = hf["text_config"]
    tie = bool(hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    decoder = _decoder_config(text, f"{source}: text_config", "qwen3", tie, multimodal=True, **decoder_run)
    vision = VisionConfig.from_hf(hf["vision_config"], f"{source}: vision_config", **tower_run)
    ids = {}
    for key in ("image_token_id", "vision_start_token_id", "vision_end_token_id", "video_token_id"):
        if not isinstance(hf.get(key), int):
            raise CheckpointError(f"{source}: field {key!r} is {hf.get(key)!r}; expected a token id")
        ids[key] = hf[key]
    try:
        return Qwen3VLConfig(decoder, vision, **ids)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e


def _decoder_config(hf: dict[str, Any], source: str, family: str, tie: bool, *, multimodal: bool = False,
                    **overrides: Any) -> Qwen3Config:
    def need(key: str) -> Any:
        if key not in hf:
            raise CheckpointError(f"{source}: required field {key!r} is missing")
        return hf[key]

    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"{source}: rope_type {rope_type!r} is not supported; expected 'default'")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
    if hf.get("use_sliding_window"):
        raise CheckpointError(f"{source}: field 'use_sliding_window' is true; only full attention is supported")
    heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    cfg = dict(
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hidden // heads),
        rope_theta=float(theta),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=tie,
        attention_bias=bool(hf.get("attention_bias", family == "qwen2")),
        qk_norm=family == "qwen3",
        max_position_embeddings=int(hf.get("max_position_embeddings", 40960)),
        family=family,
    )
    if multimodal:  # Qwen3-VL: interleaved multimodal RoPE, whatever mrope_interleaved says
        section = rope.get("mrope_section")
        if not isinstance(section, list) or len(section) != 3:
            raise CheckpointError(f"{source}: rope_parameters.mrope_section is {section!r}; expected 3 counts")
        cfg.update(mrope_section=tuple(int(n) for n in section), mrope_interleaved=True)
    cfg.update(overrides)
    try:
        return Qwen3Config(**cfg)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    if isinstance(cfg, Qwen3VLConfig):
        text = _decoder_to_hf(cfg.text)
        for key in ("architectures", "tie_word_embeddings", "dtype", "use_sliding_window", "rope_theta"):
            text.pop(key)
        text["model_type"] = "qwen3_vl_text"
        text["rope_parameters"].update(mrope_section=list(cfg.text.mrope_section), mrope_interleaved=True)
        return {
            "architectures": [VL_ARCHITECTURE],
            "model_type": "qwen3_vl",
            "text_config": text,
            "vision_config": cfg.vision.to_hf(),
            "image_token_id": cfg.image_token_id,
            "video_token_id": cfg.video_token_id,
            "vision_start_token_id": cfg.vision_start_token_id,
            "vision_end_token_id": cfg.vision_end_token_id,
            "tie_word_embeddings": cfg.text.tie_embeddings,
            "dtype": cfg.text.param_dtype,
        }
    return _decoder_to_hf(cfg)


def _decoder_to_hf(cfg: Qwen3Config) -> dict[str, Any]:
    arch = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}[cfg.family]
    hf = {
        "architectures": [arch],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_sliding_window": False,
        "dtype": cfg.param_dtype,
    }
    if cfg.family == "qwen3":
        hf["attention_bias"] = cfg.attention_bias
    return hf


def read_json(path: Path, expected: str = "a Hugging Face checkpoint folder") -> dict[str, Any]:
    """A config file's JSON object; a missing or broken file raises CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {path.name} (expected {expected})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def load_config(folder: str | Path, **overrides: Any) -> ModelConfig:
    path = Path(folder) / "config.json"
    return config_from_hf(read_json(path), str(path), **overrides)


# ----------------------------------------------------------------------------- tensor layout


def tensor_layout(cfg: Qwen3Config, prefix: str = "model.", at: tuple[Any, ...] = (),
                  head: str = "lm_head.weight") -> list[TensorMap]:
    """The decoder's tensors: Hugging Face names start with `prefix` (the output projection is
    `head`), NNX paths with `at` (where the decoder sits inside a larger model)."""
    e, h, kv, d, m, v = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                         cfg.intermediate_size, cfg.vocab_size)

    def in_proj(n: int) -> tuple[Callable, Callable]:  # HF [n*d, e] <-> ours [e, n, d]
        return (lambda w: np.ascontiguousarray(w.reshape(n, d, e).transpose(2, 0, 1)),
                lambda w: np.ascontiguousarray(w.transpose(1, 2, 0).reshape(n * d, e)))

    def bias(n: int) -> tuple[Callable, Callable]:  # HF [n*d] <-> ours [n, d]
        return (lambda b: b.reshape(n, d), lambda b: b.reshape(n * d))

    out_proj = (lambda w: np.ascontiguousarray(w.reshape(e, h, d).transpose(1, 2, 0)),
                lambda w: np.ascontiguousarray(w.transpose(2, 0, 1).reshape(e, h * d)))

    maps = [TensorMap(prefix + "embed_tokens.weight", at + ("embed",), (v, e), same, same),
            TensorMap(prefix + "norm.weight", at + ("norm", "scale"), (e,), same, same)]
    if not cfg.tie_embeddings:
        maps.append(TensorMap(head, at + ("lm_head",), (v, e), transposed, transposed))
    has_bias = cfg.attention_bias or cfg.family == "qwen2"
    for i in range(cfg.num_layers):
        p = f"{prefix}layers.{i}."
        # Scanned layers keep one stacked parameter per name; the tensor is its entry i.
        lp, layer = (at + ("layers",), i) if cfg.scan_layers else (at + ("layers", i), None)
        a = lp + ("self_attn",)

        def tm(name, path, shape, to_ours, to_hf):
            return TensorMap(p + name, path, shape, to_ours, to_hf, layer)

        maps += [
            tm("input_layernorm.weight", lp + ("input_layernorm", "scale"), (e,), same, same),
            tm("post_attention_layernorm.weight", lp + ("post_attention_layernorm", "scale"), (e,), same, same),
            tm("self_attn.q_proj.weight", a + ("q_proj",), (h * d, e), *in_proj(h)),
            tm("self_attn.k_proj.weight", a + ("k_proj",), (kv * d, e), *in_proj(kv)),
            tm("self_attn.v_proj.weight", a + ("v_proj",), (kv * d, e), *in_proj(kv)),
            tm("self_attn.o_proj.weight", a + ("o_proj",), (e, h * d), *out_proj),
            tm("mlp.gate_proj.weight", lp + ("mlp", "gate_proj"), (m, e), transposed, transposed),
            tm("mlp.up_proj.weight", lp + ("mlp", "up_proj"), (m, e), transposed, transposed),
            tm("mlp.down_proj.weight", lp + ("mlp", "down_proj"), (e, m), transposed, transposed),
        ]
        if has_bias:
            maps += [
                tm("self_attn.q_proj.bias", a + ("q_bias",), (h * d,), *bias(h)),
                tm("self_attn.k_proj.bias", a + ("k_bias",), (kv * d,), *bias(kv)),
                tm("self_attn.v_proj.bias", a + ("v_bias",), (kv * d,), *bias(kv)),
            ]
        if cfg.qk_norm:
            maps += [
                tm("self_attn.q_norm.weight", a + ("q_norm", "scale"), (d,), same, same),
                tm("self_attn.k_norm.weight", a + ("k_norm", "scale"), (d,), same, same),
            ]
    return maps


# ----------------------------------------------------------------------------- loading


def file_index(folder: Path, single: str = SINGLE_FILE, index: str = INDEX_FILE) -> dict[str, str]:
    """tensor name -> safetensors file name within `folder` (one `single` file, or an `index`
    JSON whose weight_map names the shards)."""
    index_path = folder / index
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index_path}: expected JSON with a 'weight_map' object ({e})") from e
        for fname in sorted(set(weight_map.values())):
            if not (folder / fname).is_file():
                raise CheckpointError(f"{index_path}: lists shard {fname!r}, which is not in {folder}")
        return dict(weight_map)
    single_path = folder / single
    if not single_path.is_file():
        raise CheckpointError(f"{folder}: neither {single} nor {index} found")
    with safe_open(single_path, framework="np") as f:
        return {name: single for name in f.keys()}


def place(value: np.ndarray, axes: tuple[str, ...], mesh: Mesh | None) -> jax.Array:
    """`value` on `mesh`, sharded by its logical `axes` (on the default device without a mesh)."""
    if mesh is None:
        return jax.device_put(value)
    sharding = NamedSharding(mesh, logical_to_spec(axes, value.shape, dict(mesh.shape)))
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def load_tensors_into(
    module_fn: Callable[[], nnx.Module],
    folder: Path,
    layout: Sequence[TensorMap],
    files: dict[str, str],
    *,
    mesh: Mesh | None,
    param_dtype: str,
    ignore: Callable[[str], bool] = lambda name: False,
    what: str = "model",
    progress: bool = False,
) -> nnx.Module:
    """Build `module_fn()`'s module with every variable read from `folder`'s safetensors files.

    `layout` names each tensor and where it goes; `files` maps tensor names to shard files. Missing
    and unexpected tensors (those `ignore` does not accept) and wrong shapes raise CheckpointError
    before anything is assembled. One shard file is open at a time; each tensor is converted,
    cast to `param_dtype` and placed on `mesh` by the logical axes of its variable.
    """
    abstract = nnx.eval_shape(module_fn)
    graphdef, abstract_state = nnx.split(abstract)
    variables = dict(nnx.to_flat_state(abstract_state))
    expected = {t.hf_name for t in layout}
    missing = sorted(expected - set(files))
    if missing:
        raise CheckpointError(
            f"{folder}: missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    unexpected = sorted(n for n in set(files) - expected if not n.endswith(_IGNORED_SUFFIXES) and not ignore(n))
    if unexpected:
        raise CheckpointError(f"{folder}: unexpected tensor {unexpected[0]!r} for {what}")
    uncovered = sorted("/".join(map(str, p)) for p in set(variables) - {t.path for t in layout})
    if uncovered:
        raise AssertionError(f"tensor layout of {what} leaves variables unset: {uncovered[:3]}")

    by_file: dict[str, list[TensorMap]] = {}
    for t in layout:
        by_file.setdefault(files[t.hf_name], []).append(t)
    target = numpy_dtype(param_dtype)
    loaded: dict[tuple, jax.Array] = {}
    # Stacked parameters are filled entry by entry on the host, placed once all entries are read.
    stacks = {t.path: np.empty(variables[t.path].shape, target) for t in layout if t.layer is not None}
    pending = collections.Counter(t.path for t in layout if t.layer is not None)
    items = sorted(by_file.items())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc=f"loading {folder.name}", unit="shard")
    for fname, maps in items:  # one shard file open at a time
        with safe_open(folder / fname, framework="np") as f:
            for t in maps:
                raw = f.get_tensor(t.hf_name)
                if tuple(raw.shape) != t.hf_shape:
                    raise CheckpointError(
                        f"{folder / fname}: tensor {t.hf_name!r} has shape {tuple(raw.shape)}, expected {t.hf_shape}"
                    )
                var = variables[t.path]
                value = t.to_ours(raw).astype(target)
                if t.layer is not None:
                    stacks[t.path][t.layer] = value
                    pending[t.path] -= 1
                    if pending[t.path]:
                        continue
                    value = stacks.pop(t.path)
                assert value.shape == var.shape, (t.hf_name, value.shape, var.shape)
                loaded[t.path] = place(value, var.get_metadata()["axes"], mesh)

    for path, var in variables.items():
        var.set_value(loaded[path])
    return nnx.merge(graphdef, nnx.from_flat_state(variables))


# Fields a caller may set when loading: how to run the model, not what it is. Qwen3Config's, and
# a vision tower's attention (`TowerSizes.attention` / `attention_block`) and Qwen3-VL's tower's
# blocks (`remat`, `scan_blocks`); a text model has no tower.
RUN_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat", "attention", "attention_block", "cache_block",
              "vision_attention", "vision_attention_block", "vision_remat", "vision_scan_blocks")
# The run settings of a vision tower: RUN_FIELDS name -> its config's field.
TOWER_RUN = {"dtype": "dtype", "param_dtype": "param_dtype", "vision_attention": "attention",
             "vision_attention_block": "attention_block", "vision_remat": "remat", "vision_scan_blocks": "scan_blocks"}


def split_run(run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """RUN_FIELDS settings (None or "" dropped) as (the decoder's, a vision tower's fields: the
    dtypes and its attention)."""
    run = {k: v for k, v in run.items() if v is not None and v != ""}
    return ({k: v for k, v in run.items() if not k.startswith("vision_")},
            {TOWER_RUN[k]: v for k, v in run.items() if k in TOWER_RUN})


def with_run(cfg: ModelConfig, **run: Any) -> ModelConfig:
    """`cfg` with RUN_FIELDS set (on the decoder, and on a vision tower: `split_run`)."""
    unknown = sorted(set(run) - set(RUN_FIELDS))
    if unknown:
        raise TypeError(f"unknown run setting(s) {unknown}; expected {RUN_FIELDS}")
    decoder, tower = split_run(run)
    if not isinstance(cfg, Qwen3VLConfig):
        return dataclasses.replace(cfg, **decoder)
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, **decoder),
                               vision=dataclasses.replace(cfg.vision, **tower))


def model_layout(cfg: ModelConfig) -> list[TensorMap]:
    """Every tensor of the checkpoint a config describes."""
    if isinstance(cfg, Qwen3VLConfig):
        return (tensor_layout(cfg.text, "model.language_model.", ("language_model",))
                + vision_tensor_layout(cfg.vision, "model.visual.", ("visual",)))
    return tensor_layout(cfg)


def build_model(cfg: ModelConfig, rngs: nnx.Rngs) -> Model:
    return Qwen3VL(cfg, rngs=rngs) if isinstance(cfg, Qwen3VLConfig) else Qwen3(cfg, rngs=rngs)


def load_model(folder: str | Path, mesh: Mesh | None = None, *, progress: bool = False, **run: Any) -> Model:
    """Load a Qwen3 / Qwen2 / Qwen3-VL checkpoint folder into an NNX model placed on `mesh`; `run`
    sets RUN_FIELDS of its (decoder's) config (None or "" keeps the folder's / the default)."""
    folder = Path(folder)
    unknown = sorted(set(run) - set(RUN_FIELDS))
    if unknown:
        raise TypeError(f"load_model: unknown setting(s) {unknown}; expected {RUN_FIELDS}")
    overrides = {k: v for k, v in run.items() if v is not None and v != ""}
    cfg = load_config(folder, **overrides)
    text = cfg.text if isinstance(cfg, Qwen3VLConfig) else cfg
    return load_tensors_into(
        lambda: build_model(cfg, nnx.Rngs(0)), folder, model_layout(cfg), file_index(folder),
        mesh=mesh, param_dtype=text.param_dtype,
        ignore=lambda n: text.tie_embeddings and n == "lm_head.weight",
        what=f"{type(cfg).__name__} {cfg}", progress=progress,
    )


# ----------------------------------------------------------------------------- saving


def to_host(x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def _chunks(names: Iterable[str], sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    total = 0
    for name in names:
        if shards[-1] and total + sizes[name] > max_bytes:
            shards.append([])
            total = 0
        shards[-1].append(name)
        total += sizes[name]
    return shards


def write_safetensors(
    folder: Path,
    tensors: dict[str, np.ndarray],
    *,
    max_shard_bytes: int,
    single: str = SINGLE_FILE,
    index: str = INDEX_FILE,
) -> None:
    """Write `tensors` as one `single` file, or as numbered shards plus an `index` JSON when they
    pass `max_shard_bytes` (shard names follow the single file's stem, as transformers and
    diffusers name them)."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {n: a.nbytes for n, a in tensors.items()}
    shards = _chunks(tensors, sizes, max_shard_bytes)
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(tensors, folder / single, metadata=meta)
        return
    stem = single.removesuffix(".safetensors")
    weight_map = {}
    for i, names in enumerate(shards, 1):
        fname = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in names}, folder / fname, metadata=meta)
        weight_map.update({n: fname for n in names})
    manifest = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (folder / index).write_text(json.dumps(manifest, indent=2) + "\n")


def gather_tensors(module: nnx.Module, layout: Sequence[TensorMap]) -> dict[str, np.ndarray]:
    """Every tensor of `layout` from `module`, on the host in the checkpoint's layout (every
    process takes part in gathering sharded parameters)."""
    state = dict(nnx.to_flat_state(nnx.state(module, nnx.Param)))
    host: dict[tuple, np.ndarray] = {}  # each (stacked) parameter gathered once
    out = {}
    for t in layout:
        if t.path not in host:
            host[t.path] = to_host(state[t.path][...])
        value = host[t.path] if t.layer is None else host[t.path][t.layer]
        out[t.hf_name] = t.to_hf(value)
    return out


def save_model(model: Model, folder: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write `model` as a Hugging Face folder that transformers' from_pretrained loads.

    Only process 0 writes; every process takes part in gathering sharded parameters.
    """
    folder = Path(folder)
    cfg = model.vl_cfg if isinstance(model, Qwen3VL) else model.cfg
    tensors = gather_tensors(model, model_layout(cfg))
    if jax.process_index() != 0:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n")
    write_safetensors(folder, tensors, max_shard_bytes=max_shard_bytes)
    return folder
