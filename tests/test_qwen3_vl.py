"""Qwen3-VL against transformers' PyTorch Qwen3VLForConditionalGeneration on a tiny random model
saved with save_pretrained: logits of a two-turn conversation with two images of different sizes,
greedy tokens through the KV cache, export back to transformers, checkpoint errors."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Qwen3VLConfig as HFConfig
from transformers import Qwen3VLForConditionalGeneration

from gsjax.models import hf_io
from gsjax.models.interface import ModelInput
from gsjax.models.qwen3 import init_cache
from gsjax.models.qwen3_vl import Qwen3VL, mrope_positions, vision_input
from gsjax.models.vlm import image_token_index

IMAGE, VIDEO, START, END = 290, 291, 292, 293
GRIDS = np.array([[1, 4, 6], [1, 6, 4]])  # two images: 24 patches (6 tokens) each, transposed shapes


def _hf_config(tie: bool = False) -> HFConfig:
    return HFConfig(
        text_config=dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10_000.0, "mrope_section": [3, 3, 2],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4,
                           temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=64,
                           num_position_embeddings=16, deepstack_visual_indexes=[0, 2]),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END,
        tie_word_embeddings=tie,
    )


def _conversation(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of two turns, each with one image, and the images' pixel rows."""
    rs = np.random.RandomState(seed)
    text = lambda n: rs.randint(0, 280, n).tolist()  # noqa: E731
    image = lambda g: [START] + [IMAGE] * (int(np.prod(g)) // 4) + [END]  # noqa: E731
    tokens = text(5) + image(GRIDS[0]) + text(7) + text(4) + image(GRIDS[1]) + text(6)
    pixels = rs.randn(int(GRIDS.prod(axis=1).sum()), 3 * 2 * 4 * 4).astype(np.float32)
    return np.asarray(tokens), pixels


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    return Qwen3VLForConditionalGeneration(_hf_config()).eval()


@pytest.fixture(scope="module")
def folder(hf_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen3vl")
    hf_model.save_pretrained(out)
    return out


def _hf_logits(model, tokens: np.ndarray, pixels: np.ndarray | None, grids: np.ndarray | None) -> np.ndarray:
    ids = torch.tensor(tokens[None])
    kwargs = {}
    if pixels is not None:
        kwargs = dict(pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grids),
                      mm_token_type_ids=(ids == IMAGE).int())
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits[0].numpy()


def _inputs(model: Qwen3VL, tokens: np.ndarray, pixels: np.ndarray, pad_to: int | None = None) -> ModelInput:
    positions, _ = mrope_positions(tokens, GRIDS, model.vl_cfg)
    vision = vision_input(tokens[None], pixels, GRIDS, model.vl_cfg, pad_to=pad_to)
    return ModelInput(jnp.asarray(tokens[None]), jnp.asarray(positions[:, None, :]), None, vision)


def test_positions_equal_transformers_rope_index(hf_model, folder):
    tokens, _ = _conversation()
    ids = torch.tensor(tokens[None])
    ref, delta = hf_model.model.get_rope_index(ids, (ids == IMAGE).int(), torch.tensor(GRIDS))
    ours, our_delta = mrope_positions(tokens, GRIDS, hf_io.load_config(folder))
    np.testing.assert_array_equal(ours, ref[:, 0].numpy())
    assert our_delta == int(delta[0, 0]) < 0  # images take fewer positions than tokens


def test_logits_with_two_images_equal_transformers(hf_model, folder):
    model = hf_io.load_model(folder)
    assert isinstance(model, Qwen3VL) and model.cfg.mrope_section == (3, 3, 2)
    tokens, pixels = _conversation()
    ref = _hf_logits(hf_model, tokens, pixels, GRIDS)
    np.testing.assert_allclose(np.asarray(model(_inputs(model, tokens, pixels)))[0], ref, atol=1e-4, rtol=0)
    # Patches padded to a bucket change nothing.
    np.testing.assert_allclose(np.asarray(model(_inputs(model, tokens, pixels, pad_to=64)))[0], ref, atol=1e-4, rtol=0)
    # The images matter: other pixels, other logits at and after the first image.
    other = np.asarray(model(_inputs(model, tokens, pixels[::-1].copy())))[0]
    assert np.abs(other[8:] - ref[8:]).max() > 1e-3
    np.testing.assert_allclose(other[:6], ref[:6], atol=1e-4, rtol=0)


def test_text_only_logits_equal_transformers(hf_model, folder):
    model = hf_io.load_model(folder, scan_layers=True)
    tokens = np.random.RandomState(3).randint(0, 280, 21)
    np.testing.assert_allclose(np.asarray(model(ModelInput(jnp.asarray(tokens[None]))))[0],
                               _hf_logits(hf_model, tokens, None, None), atol=1e-4, rtol=0)


def test_greedy_tokens_through_the_cache_equal_generate(hf_model, folder):
    """32 greedy tokens: prefill the conversation with its images into a cache slot, then decode
    one token at a time at cache index + the rope offset; equal to transformers' generate."""
    model = hf_io.load_model(folder)
    tokens, pixels = _conversation(1)
    ids = torch.tensor(tokens[None])
    with torch.no_grad():
        ref = hf_model.generate(input_ids=ids, pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(GRIDS),
                                mm_token_type_ids=(ids == IMAGE).int(), max_new_tokens=32, do_sample=False,
                                min_new_tokens=32)[0, len(tokens):].numpy()
    _, delta = mrope_positions(tokens, GRIDS, model.vl_cfg)
    cache = init_cache(model.cfg, 1, 128)
    hidden, cache = model.forward_cached(_inputs(model, tokens, pixels), cache, jnp.zeros(1, jnp.int32))
    out = [int(jnp.argmax(model.logits(hidden[0, -1])))]
    for i in range(31):
        at = len(tokens) + i
        step = ModelInput(jnp.asarray([[out[-1]]]), jnp.full((3, 1, 1), at + delta, jnp.int32))
        hidden, cache = model.forward_cached(step, cache, jnp.asarray([at], jnp.int32))
        out.append(int(jnp.argmax(model.logits(hidden[0, -1]))))
    np.testing.assert_array_equal(out, ref)


def test_export_loads_back_in_transformers_with_the_same_logits(folder, tmp_path):
    model = hf_io.load_model(folder)
    hf_io.save_model(model, tmp_path / "export")
    reloaded = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
    tokens, pixels = _conversation(2)
    np.testing.assert_allclose(_hf_logits(reloaded, tokens, pixels, GRIDS),
                               np.asarray(model(_inputs(model, tokens, pixels)))[0], atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "export" / "config.json").read_text())["architectures"] == [
        "Qwen3VLForConditionalGeneration"]


def test_tied_embeddings_load(tmp_path):
    torch.manual_seed(1)
    hf = Qwen3VLForConditionalGeneration(_hf_config(tie=True)).eval()
    hf.save_pretrained(tmp_path)
    model = hf_io.load_model(tmp_path)
    assert model.cfg.tie_embeddings and model.language_model.lm_head is None
    tokens, pixels = _conversation(4)
    np.testing.assert_allclose(np.asarray(model(_inputs(model, tokens, pixels)))[0],
                               _hf_logits(hf, tokens, pixels, GRIDS), atol=1e-4, rtol=0)


def test_bad_inputs_and_configs_are_named(folder, tmp_path):
    cfg = hf_io.load_config(folder)
    tokens, pixels = _conversation()
    with pytest.raises(ValueError, match="the tokens hold 12 image tokens but the images give 6 embeddings"):
        image_token_index(tokens[None], IMAGE, 6)
    with pytest.raises(ValueError, match=r"1 image grid\(s\) given but the tokens hold 2 image run\(s\)|image run 2 has no grid"):
        mrope_positions(tokens, GRIDS[:1], cfg)
    with pytest.raises(ValueError, match="pixel_values has 47 patch rows"):
        vision_input(tokens[None], pixels[:-1], GRIDS, cfg)
    hf = json.loads((folder / "config.json").read_text())
    del hf["text_config"]["rope_parameters"]["mrope_section"]
    with pytest.raises(hf_io.CheckpointError, match="text_config: rope_parameters.mrope_section is None"):
        hf_io.config_from_hf(hf)
    hf = json.loads((folder / "config.json").read_text())
    del hf["image_token_id"]
    with pytest.raises(hf_io.CheckpointError, match="field 'image_token_id' is None"):
        hf_io.config_from_hf(hf)


def test_sampler_with_images_equals_generate_and_the_full_pass(hf_model, folder):
    """The sampler encodes each insert's images once: greedy tokens after a prompt with an image
    equal transformers' generate; after a second insert with another image (appended to the same
    slot), the log-probabilities the sampler records for forced tokens equal a full pass over the
    whole conversation with both images (what the learner recomputes)."""
    from gsjax.models.interface import Pixels
    from gsjax.models.losses import token_logprobs
    from gsjax.sampling import Sampler, SamplingParams

    model = hf_io.load_model(folder)
    tokens, pixels = _conversation(5)
    first = 5 + 2 + 6 + 7  # text, the first image's run, text
    split = int(GRIDS[0].prod())
    sampler = Sampler(model, num_slots=2, cache_len=160, params=SamplingParams(temperature=0.0),
                      prefill_buckets=(4, 8))  # pieces of 8 tokens: image runs split across pieces
    sampler.start(1, tokens[:first].tolist(), 12, images=Pixels(pixels[:split], GRIDS[:1]))
    turns = []
    while not turns:
        turns = sampler.step()
    ids = torch.tensor(tokens[None, :first])
    with torch.no_grad():
        ref = hf_model.generate(input_ids=ids, pixel_values=torch.tensor(pixels[:split]),
                                image_grid_thw=torch.tensor(GRIDS[:1]), mm_token_type_ids=(ids == IMAGE).int(),
                                max_new_tokens=12, min_new_tokens=12, do_sample=False)[0, first:].numpy()
    turn = turns[0]
    np.testing.assert_array_equal(turn.tokens, ref)

    # Second insert: the rest of the conversation (with the second image), teacher-forced.
    rest = tokens[first:].tolist()
    forced = np.random.RandomState(6).randint(0, 280, 10).tolist()
    sampler.append(1, rest, 10, forced=forced, images=Pixels(pixels[split:], GRIDS[1:]))
    turns = []
    while not turns:
        turns = sampler.step()
    whole = np.asarray(tokens[:first].tolist() + turn.tokens + rest + forced)
    full = np.asarray(token_logprobs(model, _inputs_for(model, whole, pixels)))[0]
    np.testing.assert_allclose(turns[0].logprobs, full[-10:], atol=1e-4)
    np.testing.assert_allclose(turn.logprobs, full[first:first + 12], atol=1e-4)
    assert sampler.compile_counts["encode[32]"] == 1  # one bucket, both inserts


def _inputs_for(model: Qwen3VL, tokens: np.ndarray, pixels: np.ndarray) -> ModelInput:
    positions, _ = mrope_positions(tokens, GRIDS, model.vl_cfg)
    vision = vision_input(tokens[None], pixels, GRIDS, model.vl_cfg)
    return ModelInput(jnp.asarray(tokens[None]), jnp.asarray(positions[:, None, :]), None, vision)
