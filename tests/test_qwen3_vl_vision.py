"""The Qwen3-VL vision tower equals transformers' PyTorch Qwen3VLVisionModel (tiny random model, fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers import vision_utils

from gsjax.models.hf_io import CheckpointError, file_index, gather_tensors, load_tensors_into
from gsjax.models.qwen3_vl_vision import (
    VisionConfig,
    VisionTower,
    load_vision_state,
    tiny_vision_config,
    vision_layout,
    vision_tensor_layout,
)

# Three images (the 4x4 position table resampled to 4x6, 6x4 and 2x2) and a 2-frame video, whose
# frames attend separately in transformers.
GRIDS = [(1, 4, 6), (1, 6, 4), (1, 2, 2), (2, 2, 4)]
PATCHES = sum(t * h * w for t, h, w in GRIDS)
CFG = tiny_vision_config()


@pytest.fixture(scope="module")
def hf_model() -> transformers.Qwen3VLVisionModel:
    torch.manual_seed(0)
    model = transformers.Qwen3VLVisionModel(transformers.Qwen3VLVisionConfig(**CFG.to_hf()))
    # transformers' init (std 0.02, norms at 1, biases at 0) keeps activations near zero, where
    # the two GELUs agree; weights of std fan_in**-0.5 give activations of order 1.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, p[0].numel() ** -0.5)
    return model.eval()


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((PATCHES, CFG.patch_dim)).astype(np.float32)


@pytest.fixture(scope="module")
def hf_out(hf_model, pixels):
    with torch.no_grad():
        out = hf_model(torch.from_numpy(pixels), torch.tensor(GRIDS))
    return out.pooler_output.numpy(), [f.numpy() for f in out.deepstack_features]


@pytest.fixture(scope="module")
def tower(hf_model) -> VisionTower:
    tower = VisionTower(CFG, rngs=nnx.Rngs(1))
    load_vision_state(tower, {"model.visual." + k: v.numpy() for k, v in hf_model.state_dict().items()})
    return tower


def run_tower(tower: VisionTower, pixels: np.ndarray, pad_to: int | None = None):
    layout = vision_layout(GRIDS, CFG, pad_to)
    if pad_to is not None:
        pixels = np.concatenate([pixels, np.ones((pad_to - len(pixels), CFG.patch_dim), np.float32)])
    embeds, deepstack = nnx.jit(lambda m, p, lay: m(p, lay))(tower, pixels, layout.on_device())
    return np.asarray(embeds), np.asarray(deepstack), layout


def test_layout_equals_transformers_rotary_ids_interpolation_and_segments():
    layout = vision_layout(GRIDS, CFG)
    grid = torch.tensor(GRIDS)
    index, weight = vision_utils.get_vision_interpolation_indices_and_weights(
        grid, CFG.grid_side, mode="bilinear", align_corners=True, spatial_merge_size=CFG.spatial_merge_size)
    positions = vision_utils.get_vision_position_ids(grid, CFG.spatial_merge_size)
    np.testing.assert_array_equal(layout.positions, positions.numpy())
    np.testing.assert_array_equal(layout.pos_index, index.numpy())
    np.testing.assert_array_equal(layout.pos_weight, weight.numpy())
    cu = vision_utils.get_vision_cu_seqlens(grid).numpy()
    expected_segments = np.repeat(np.arange(1, len(cu)), np.diff(cu))
    np.testing.assert_array_equal(layout.segment_ids, expected_segments)
    np.testing.assert_array_equal(layout.tokens_per_image, [6, 6, 1, 4])


def test_tower_equals_transformers_embeddings_and_deepstack_features(tower, pixels, hf_out):
    embeds, deepstack, _ = run_tower(tower, pixels)
    hf_embeds, hf_deepstack = hf_out
    assert embeds.shape == (PATCHES // 4, CFG.out_hidden_size)
    assert deepstack.shape == (len(CFG.deepstack_visual_indexes), PATCHES // 4, CFG.out_hidden_size)
    np.testing.assert_allclose(embeds, hf_embeds, atol=1e-5, rtol=0)
    for ours, theirs in zip(deepstack, hf_deepstack, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_scanned_rematerialised_blocked_tower_equals_transformers_and_the_loops_gradients(tower, hf_model, pixels,
                                                                                           hf_out):
    """The 8B presets' way of running the tower (blocks scanned between deepstack taps, full
    remat, blocked attention in blocks smaller than an image) computes the same tokens, features
    and parameter gradients as the Python loop with plain attention."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    run = dataclasses.replace(CFG, scan_blocks=True, remat="full", attention="blocked", attention_block=8)
    scanned = VisionTower(run, rngs=nnx.Rngs(1))
    load_vision_state(scanned, {"model.visual." + k: v.numpy() for k, v in hf_model.state_dict().items()})
    embeds, deepstack, layout = run_tower(scanned, pixels)
    np.testing.assert_allclose(embeds, hf_out[0], atol=1e-5, rtol=0)
    for ours, theirs in zip(deepstack, hf_out[1], strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)

    def grads(model):
        graphdef, state = nnx.split(model)

        def loss(s):
            tokens, features = nnx.merge(graphdef, s)(jnp.asarray(pixels), layout.on_device())
            return jnp.sum(jnp.sin(tokens)) + jnp.sum(jnp.sin(features))

        return jax.jit(jax.grad(loss))(state)

    # Relative to each parameter's largest gradient (gradients here are of order 1 to 100).
    errors = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max() / jnp.abs(a).max()), grads(tower), grads(scanned))
    assert max(jax.tree.leaves(errors)) <= 1e-5


def test_padding_patches_leave_the_real_tokens_unchanged(tower, pixels, hf_out):
    pad_to = PATCHES + 12
    layout = vision_layout(GRIDS, CFG, pad_to)
    assert layout.segment_ids[PATCHES:].tolist() == [0] * 12 and not layout.pos_weight[PATCHES:].any()
    embeds, deepstack, _ = run_tower(tower, pixels, pad_to)
    real = PATCHES // 4
    assert embeds.shape == (pad_to // 4, CFG.out_hidden_size)
    np.testing.assert_allclose(embeds[:real], hf_out[0], atol=1e-5, rtol=0)
    for ours, theirs in zip(deepstack[:, :real], hf_out[1], strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_tensor_layout_round_trips_and_names_qwen3_vl_checkpoint_tensors(tower, hf_model, tmp_path):
    state = {"model.visual." + k: v.numpy() for k, v in hf_model.state_dict().items()}
    layout = vision_tensor_layout(CFG)
    back = gather_tensors(tower, layout)
    assert set(back) == set(state)
    for name, value in state.items():
        assert back[name].shape == value.shape, name
        np.testing.assert_array_equal(back[name], value, err_msg=name)

    # The names Qwen3VLForConditionalGeneration saves, loaded through hf_io from its folder.
    text = dict(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, head_dim=24)
    full = transformers.Qwen3VLForConditionalGeneration(
        transformers.Qwen3VLConfig(vision_config=CFG.to_hf(), text_config=text))
    full.save_pretrained(tmp_path)
    loaded = load_tensors_into(
        lambda: VisionTower(CFG, rngs=nnx.Rngs(0)), tmp_path, layout, file_index(tmp_path), mesh=None,
        param_dtype="float32", ignore=lambda n: not n.startswith("model.visual."), what="vision tower")
    saved = {k: v.numpy() for k, v in full.state_dict().items() if k.startswith("model.visual.")}
    again = gather_tensors(loaded, layout)
    assert set(again) == set(saved)
    for name, value in saved.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_config_from_hf_to_hf_and_parameter_count(hf_model):
    assert VisionConfig.from_hf(hf_model.config.to_dict()) == CFG
    whole = transformers.Qwen3VLConfig(vision_config=CFG.to_hf()).to_dict()
    assert VisionConfig.from_hf(whole, dtype="bfloat16") == tiny_vision_config(dtype="bfloat16")
    assert CFG.num_params() == sum(p.numel() for p in hf_model.parameters())


def test_config_from_hf_names_missing_and_invalid_fields():
    d = CFG.to_hf()
    with pytest.raises(ValueError, match="'spatial_merge_size' is missing"):
        VisionConfig.from_hf({k: v for k, v in d.items() if k != "spatial_merge_size"}, "vision.json")
    with pytest.raises(ValueError, match="'depth' is 'three'"):
        VisionConfig.from_hf({**d, "depth": "three"})
    with pytest.raises(ValueError, match="hidden_act='quick_gelu'"):
        VisionConfig.from_hf({**d, "hidden_act": "quick_gelu"})
    with pytest.raises(CheckpointError, match="num_position_embeddings=15"):
        VisionConfig.from_hf({**d, "num_position_embeddings": 15})


def test_layout_rejects_bad_pad_to_and_grids():
    with pytest.raises(ValueError, match="pad_to=70 must be a multiple"):
        vision_layout(GRIDS, CFG, pad_to=70)
    with pytest.raises(ValueError, match=f"pad_to=64 is smaller than the images' {PATCHES} patches"):
        vision_layout(GRIDS, CFG, pad_to=64)
    with pytest.raises(ValueError, match=r"grid_thw\[1\] = \(1, 3, 4\)"):
        vision_layout([(1, 2, 2), (1, 3, 4)], CFG)


def test_tower_rejects_layout_of_other_patches(tower, pixels):
    layout = vision_layout(GRIDS, CFG, PATCHES + 4).on_device()
    with pytest.raises(ValueError, match="layout.positions has shape"):
        tower(pixels, layout)
