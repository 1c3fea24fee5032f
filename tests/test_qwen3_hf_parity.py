"""gsjax's Qwen3 / Qwen2 against transformers (PyTorch) on tiny random checkpoints."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_fixtures import make_hf_model, save_hf_model

from gsjax.models.interface import ModelInput
from gsjax.models import hf_io
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.sampling import Sampler, SamplingParams

CASES = [("qwen3", False), ("qwen3", True), ("qwen2", False)]


def _tokens(batch=3, length=24, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(batch, length))


def _torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}{'-tied' if c[1] else ''}")
def checkpoint(request, tmp_path_factory):
    family, tie = request.param
    hf_model = make_hf_model(family, tie=tie)
    folder = save_hf_model(hf_model, tmp_path_factory.mktemp(f"{family}{tie}"))
    return hf_model, folder


def test_loaded_logits_match_transformers_fp32(checkpoint):
    hf_model, folder = checkpoint
    tokens = _tokens()
    ours = hf_io.load_model(folder)
    np.testing.assert_allclose(np.asarray(ours(ModelInput(jnp.asarray(tokens)))), _torch_logits(hf_model, tokens), atol=1e-4, rtol=0)


def test_exported_checkpoint_loads_in_transformers_with_same_logits(checkpoint, tmp_path):
    hf_model, folder = checkpoint
    tokens = _tokens(seed=1)
    ours = hf_io.load_model(folder)
    hf_io.save_model(ours, tmp_path / "export")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert type(reloaded) is type(hf_model)
    np.testing.assert_allclose(_torch_logits(reloaded, tokens), np.asarray(ours(ModelInput(jnp.asarray(tokens)))), atol=1e-5, rtol=0)


def test_scanned_layers_load_and_export_the_same_checkpoint(checkpoint, tmp_path):
    """With scan_layers the layers' tensors load into stacked parameters (the sampler's and the
    8B learner's layout); logits match transformers and the export loads back in transformers."""
    hf_model, folder = checkpoint
    tokens = _tokens(seed=2)
    scanned = hf_io.load_model(folder, scan_layers=True, remat="full")
    assert scanned.layers.mlp.up_proj[...].shape[0] == scanned.cfg.num_layers
    np.testing.assert_allclose(np.asarray(scanned(ModelInput(jnp.asarray(tokens)))), _torch_logits(hf_model, tokens), atol=1e-4,
                               rtol=0)
    hf_io.save_model(scanned, tmp_path / "export")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    np.testing.assert_allclose(_torch_logits(reloaded, tokens), _torch_logits(hf_model, tokens), atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="unknown setting"):
        hf_io.load_model(folder, scan=True)


def test_greedy_32_tokens_identical_to_transformers_generate(checkpoint):
    hf_model, folder = checkpoint
    prompts = [p.tolist() for p in (_tokens(1, n, seed=n)[0] for n in (4, 9, 23))]
    sampler = Sampler(hf_io.load_model(folder), num_slots=4, cache_len=96, params=SamplingParams(temperature=0.0))
    turns = sampler.generate(prompts, max_new_tokens=32)
    for prompt, turn in zip(prompts, turns):
        with torch.no_grad():
            ref = hf_model.generate(
                torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0
            )[0, len(prompt):].tolist()
        assert turn.tokens == ref
        assert len(turn.tokens) == 32


def test_sharded_checkpoint_with_index_loads(tmp_path):
    hf_model = make_hf_model("qwen3")
    folder = save_hf_model(hf_model, tmp_path / "sharded", max_shard_size="60KB")
    assert (folder / "model.safetensors.index.json").exists()
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    tokens = _tokens()
    ours = hf_io.load_model(folder)
    np.testing.assert_allclose(np.asarray(ours(ModelInput(jnp.asarray(tokens)))), _torch_logits(hf_model, tokens), atol=1e-4, rtol=0)


def test_our_own_sharded_export_round_trips(tmp_path):
    from flax import nnx

    model = Qwen3(tiny_config(), rngs=nnx.Rngs(3))
    hf_io.save_model(model, tmp_path / "out", max_shard_bytes=40_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again = hf_io.load_model(tmp_path / "out")
    tokens = jnp.asarray(_tokens())
    np.testing.assert_array_equal(np.asarray(model(ModelInput(tokens % 512))), np.asarray(again(ModelInput(tokens % 512))))


def test_bf16_load_runs_close_to_fp32(checkpoint):
    hf_model, folder = checkpoint
    tokens = _tokens()
    bf16 = hf_io.load_model(folder, dtype="bfloat16", param_dtype="bfloat16")
    assert bf16.embed[...].dtype == jnp.bfloat16
    logits = np.asarray(bf16(ModelInput(jnp.asarray(tokens))))
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, _torch_logits(hf_model, tokens), atol=0.05)


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def good_folder(tmp_path):
    return save_hf_model(make_hf_model("qwen3"), tmp_path / "good")


def _rewrite_tensors(folder, edit):
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_is_named(good_folder):
    _rewrite_tensors(good_folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(hf_io.CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        hf_io.load_model(good_folder)


def test_wrong_shape_names_tensor_and_expected_shape(good_folder):
    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((32, 64), np.float32)

    _rewrite_tensors(good_folder, edit)
    with pytest.raises(hf_io.CheckpointError, match=r"k_proj\.weight' has shape \(32, 64\), expected \(64, 64\)"):
        hf_io.load_model(good_folder)


def test_unknown_architecture_names_field_and_supported(good_folder):
    cfg = json.loads((good_folder / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (good_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(hf_io.CheckpointError, match=r"'architectures' is \['LlamaForCausalLM'\]; expected one of \['Qwen2ForCausalLM', 'Qwen3ForCausalLM', 'Qwen3VLForConditionalGeneration'\]"):
        hf_io.load_model(good_folder)


def test_missing_config_field_is_named(good_folder):
    cfg = json.loads((good_folder / "config.json").read_text())
    del cfg["hidden_size"]
    (good_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(hf_io.CheckpointError, match="required field 'hidden_size' is missing"):
        hf_io.load_model(good_folder)


def test_unexpected_tensor_is_named(good_folder):
    def edit(t):
        t["model.layers.7.mlp.up_proj.weight"] = np.zeros((128, 64), np.float32)

    _rewrite_tensors(good_folder, edit)
    with pytest.raises(hf_io.CheckpointError, match=r"unexpected tensor 'model\.layers\.7\.mlp\.up_proj\.weight'"):
        hf_io.load_model(good_folder)


def test_index_listing_absent_shard_is_named(tmp_path):
    folder = save_hf_model(make_hf_model("qwen3"), tmp_path / "s", max_shard_size="60KB")
    victim = sorted(folder.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(hf_io.CheckpointError, match=victim.name):
        hf_io.load_model(folder)
