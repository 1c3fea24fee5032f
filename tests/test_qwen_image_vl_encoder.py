"""Qwen-Image-Edit's text encoder with the reference images (Qwen2.5-VL: vision tower, multimodal
RoPE) against transformers 5.23 / diffusers 0.42.1 (PyTorch, fp32) on tiny random models they
create and `save_pretrained`.

diffusers' QwenImageEditPlusPipeline on transformers 5 does not pass `mm_token_type_ids` to the
text encoder (diffusers issue #14194), so transformers falls back to 1-D positions for the image
tokens; the comparisons run it with that argument passed (`mrope_fix`, diffusers PR #14189's
change), which gives the multimodal positions Qwen-Image was trained with. A strict xfail keeps
the unfixed behaviour visible.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from diffusers import QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as edit_plus
from flax import nnx
from PIL import Image
from qwen_image_fixtures import make_diffusers_parts, save_parts
from safetensors.numpy import load_file, save_file
from transformers import vision_utils
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf_qwen2_5_vl
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from gsjax.models import qwen2_5_vl
from gsjax.models.hf_io import CheckpointError, gather_tensors
from gsjax.models.qwen2_5_vl_vision import VisionTower, tiny_vision_config, vision_layout, vision_tensor_layout
from gsjax.models.qwen_image import QwenImageEditPipeline
from gsjax.models.qwen_image.text_encoder import EDIT_TEMPLATE, QWEN2_5_VL_PROCESSOR, QwenTextEncoder
from gsjax.tokenizer import Tokenizer

VISION = tiny_vision_config()  # 3 blocks, block 1 full attention, windows of 2x2 tokens (4x4 patches)
# Two images: a 4x6-token grid (windows tile it, plus HF's empty padding windows) and 5x3 (partial
# windows at the edges).
GRIDS = [(1, 8, 12), (1, 10, 6)]
PROMPTS = ["make the fox on the banner red", "put the emblem of the team on a blue flag"]
CORPUS = [EDIT_TEMPLATE, "Picture 1: Picture 2: Picture 3:", *PROMPTS]


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """transformers' init keeps activations near zero; weights of std fan_in**-0.5 give them order 1,
    and norm weights and biases moved off 1 and 0 make them matter."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, p[0].numel() ** -0.5)
    return model.eval()


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), np.uint8))


class ImageOnlyProcessor(transformers.Qwen2VLProcessor):
    """Qwen2VLProcessor without its video processor, which needs torchvision (not installed here)."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]

    def __init__(self, image_processor, tokenizer):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_bpe(CORPUS, 400)


@pytest.fixture(scope="module")
def hf_text_encoder(tokenizer) -> transformers.Qwen2_5_VLForConditionalGeneration:
    ids = {k: tokenizer.token_to_id(t) for k, t in
           [("image_token_id", "<|image_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>")]}
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 10_000.0, "mrope_section": [2, 2, 2]}),
        vision_config=VISION.to_hf(), video_token_id=tokenizer.vocab_size - 1, **ids)
    torch.manual_seed(0)
    return perturb(transformers.Qwen2_5_VLForConditionalGeneration(cfg))


@pytest.fixture(scope="module")
def parts():
    return make_diffusers_parts()  # the transformer's text width (24) is the encoder's hidden size


@pytest.fixture(scope="module")
def folder(parts, hf_text_encoder, tokenizer, tmp_path_factory):
    """A Qwen-Image-Edit pipeline folder as released: transformer/, vae/, scheduler/,
    text_encoder/ (Qwen2_5_VLForConditionalGeneration), tokenizer/, processor/."""
    root = save_parts(parts, tmp_path_factory.mktemp("qwen_image_vl"))
    hf_text_encoder.save_pretrained(root / "text_encoder")
    tokenizer.save(root / "tokenizer")
    hf_image_processor().save_pretrained(root / "processor")
    return root


def hf_image_processor() -> Qwen2VLImageProcessorPil:
    # Qwen2.5-VL's preprocessor_config.json values (patch 14, merge 2, CLIP mean / std).
    return Qwen2VLImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": 12845056})


@pytest.fixture(scope="module")
def encoder(folder) -> QwenTextEncoder:
    encoder = QwenTextEncoder.from_pretrained(folder)  # text_encoder/, tokenizer/, processor/
    assert encoder.sees_images and encoder.processor == QWEN2_5_VL_PROCESSOR
    return encoder


@pytest.fixture(scope="module")
def diffusers_pipe(parts, hf_text_encoder, folder, encoder):
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer")
    transformer, vae, scheduler = parts
    pipe = QwenImageEditPlusPipeline(scheduler=scheduler, vae=vae, text_encoder=hf_text_encoder, tokenizer=hf_tok,
                                     processor=ImageOnlyProcessor(hf_image_processor(), hf_tok),
                                     transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    # diffusers drops 64 tokens: the system prefix's length with Qwen's tokenizer. This test
    # tokenizer's (400 tokens) is longer; drop exactly it.
    assert encoder.drop != 64
    pipe.prompt_template_encode_start_idx = encoder.drop
    return pipe


@pytest.fixture
def mrope_fix(monkeypatch, hf_text_encoder):
    """Pass mm_token_type_ids (image tokens = 1) to the text encoder, as diffusers PR #14189 does."""
    forward, image_id = hf_text_encoder.forward, hf_text_encoder.config.image_token_id

    def with_token_types(*args, input_ids=None, **kw):
        kw.setdefault("mm_token_type_ids", (input_ids == image_id).int())
        return forward(*args, input_ids=input_ids, **kw)

    monkeypatch.setattr(hf_text_encoder, "forward", with_token_types)


def diffusers_embeds(pipe, prompt: str, refs: list[Image.Image] | None) -> np.ndarray:
    """encode_prompt as QwenImageEditPlusPipeline.__call__ calls it: the references resized to
    CONDITION_IMAGE_SIZE first."""
    images = None
    if refs is not None:
        images = []
        for img in refs:
            w, h = edit_plus.calculate_dimensions(edit_plus.CONDITION_IMAGE_SIZE, img.size[0] / img.size[1])
            images.append(pipe.image_processor.resize(img, h, w))
    with torch.no_grad():
        embeds, mask = pipe.encode_prompt(prompt, image=images, device="cpu")
    assert mask is None  # one prompt: every position is real
    return embeds.numpy()


# ----------------------------------------------------------------------------- the vision tower


@pytest.fixture(scope="module")
def hf_tower() -> hf_qwen2_5_vl.Qwen2_5_VisionTransformerPretrainedModel:
    torch.manual_seed(0)
    config = transformers.Qwen2_5_VLVisionConfig(**VISION.to_hf())
    return perturb(hf_qwen2_5_vl.Qwen2_5_VisionTransformerPretrainedModel(config))


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((sum(t * h * w for t, h, w in GRIDS), VISION.patch_dim)
                                                    ).astype(np.float32)


def our_tower(hf_tower) -> VisionTower:
    maps = vision_tensor_layout(VISION, "visual.")
    state = {"visual." + k: v.numpy() for k, v in hf_tower.state_dict().items()}
    assert {t.hf_name for t in maps} == set(state)
    tower = VisionTower(VISION, rngs=nnx.Rngs(1))
    flat = dict(nnx.to_flat_state(nnx.state(tower, nnx.Param)))
    for t in maps:
        flat[t.path].set_value(jnp.asarray(t.to_ours(state[t.hf_name])))
    nnx.update(tower, nnx.from_flat_state(flat))
    return tower


def test_layout_equals_transformers_window_index_positions_and_segments():
    layout = vision_layout(GRIDS, VISION)
    grid = torch.tensor(GRIDS)
    window_index, cu_windows = vision_utils.get_vision_window_index(grid, VISION.spatial_merge_size,
                                                                    VISION.window_size, VISION.patch_size)
    np.testing.assert_array_equal(layout.window_index, window_index.numpy())
    np.testing.assert_array_equal(layout.reverse_index, np.argsort(window_index.numpy()))
    lengths = np.diff(cu_windows.numpy())
    np.testing.assert_array_equal(layout.window_segments, np.repeat(np.arange(1, len(lengths) + 1), lengths))
    assert len(lengths) == 6 + 6 and lengths.min() < 16  # 2x3 whole windows, 3x2 with partial ones
    cu = vision_utils.get_vision_cu_seqlens(grid).numpy()
    np.testing.assert_array_equal(layout.image_segments, np.repeat(np.arange(1, len(cu)), np.diff(cu)))
    positions = vision_utils.get_vision_position_ids(grid, VISION.spatial_merge_size).numpy()
    permuted = positions.reshape(-1, 4, 2)[window_index.numpy()].reshape(-1, 2)  # as HF permutes cos / sin
    np.testing.assert_array_equal(layout.positions, permuted)
    np.testing.assert_array_equal(layout.tokens_per_image, [24, 15])


def test_tower_with_window_attention_equals_transformers(hf_tower, pixels):
    with torch.no_grad():
        ref = hf_tower(torch.from_numpy(pixels), torch.tensor(GRIDS)).pooler_output.numpy()
    tower = our_tower(hf_tower)
    run = nnx.jit(lambda m, p, lay: m(p, lay))
    ours = np.asarray(run(tower, pixels, vision_layout(GRIDS, VISION).on_device()))
    assert ours.shape == ref.shape == (39, VISION.out_hidden_size) and ref.std() > 0.3
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)

    # Padded to a bucket: the real tokens are unchanged, padding comes last.
    pad = 28
    padded = np.concatenate([pixels, np.ones((pad, VISION.patch_dim), np.float32)])
    layout = vision_layout(GRIDS, VISION, len(pixels) + pad)
    assert not layout.window_segments[-pad:].any() and not layout.image_segments[-pad:].any()
    out = np.asarray(run(tower, padded, layout.on_device()))
    np.testing.assert_allclose(out[: len(ref)], ref, atol=1e-5, rtol=0)

    # Every block attending to its whole image changes the tokens: the windows are exercised.
    full = dataclasses.replace(VISION, fullatt_block_indexes=(0, 1, 2))
    full_tower = VisionTower(full, rngs=nnx.Rngs(0))
    nnx.update(full_tower, nnx.state(tower))
    assert np.abs(np.asarray(run(full_tower, pixels, vision_layout(GRIDS, full).on_device())) - ref).max() > 1e-2


def test_rope_positions_equal_transformers_get_rope_index(hf_text_encoder, encoder):
    cfg = encoder.model.vl_cfg
    img, start, end = cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id
    grids = np.array([(1, 8, 12), (1, 10, 6)])
    tokens = [5, 6, start] + [img] * 24 + [end, 7, start] + [img] * 15 + [end, 8, 9, 2]
    ours, delta = qwen2_5_vl.rope_positions(tokens, grids, cfg)
    ids = torch.tensor([tokens])
    ref, ref_delta = hf_text_encoder.model.get_rope_index(ids, (ids == img).int(), image_grid_thw=torch.tensor(grids))
    np.testing.assert_array_equal(ours, ref[:, 0].numpy())
    assert delta == int(ref_delta[0, 0]) and ours[0, 3:27].max() == 3  # still images: the temporal row stays put


# ----------------------------------------------------------------------------- prompt embeddings


@pytest.mark.parametrize("n_refs", [1, 2])
def test_embeddings_with_reference_images_equal_diffusers_encode_prompt(encoder, diffusers_pipe, mrope_fix, n_refs):
    refs = [noise_image(200, 150, 0), noise_image(120, 260, 1)][:n_refs]
    ref = diffusers_embeds(diffusers_pipe, PROMPTS[0], refs)
    ours = encoder.encode([PROMPTS[0]], images=[refs])
    image_tokens = {1: 176, 2: 176 + 189}[n_refs]  # 448x320 -> 308x448 (22x32 patches); 256x576 -> 588x252
    assert ours.embeds.shape == ref.shape and ref.shape[1] > image_tokens
    assert ours.mask.all()
    np.testing.assert_allclose(ours.embeds, ref, atol=1e-4, rtol=0)
    text_only = encoder.encode([PROMPTS[0]]).embeds
    # The images change the text's states too.
    assert np.abs(ours.embeds[0, -text_only.shape[1]:] - text_only[0]).max() > 0.1


def test_a_batch_mixes_prompts_with_and_without_images(encoder, diffusers_pipe, mrope_fix):
    refs = [noise_image(200, 150, 0)]
    batch = encoder.encode(PROMPTS, images=[refs, []])
    with_image = diffusers_embeds(diffusers_pipe, PROMPTS[0], refs)
    text_only = diffusers_embeds(diffusers_pipe, PROMPTS[1], None)
    n0, n1 = with_image.shape[1], text_only.shape[1]
    assert batch.mask[0].sum() == n0 and batch.mask[1].sum() == n1 and not batch.embeds[1, n1:].any()
    np.testing.assert_allclose(batch.embeds[0, :n0], with_image[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(batch.embeds[1, :n1], text_only[0], atol=1e-4, rtol=0)


@pytest.mark.xfail(strict=True, reason="diffusers 0.42.1 does not pass mm_token_type_ids to the text encoder "
                                        "(diffusers #14194): transformers 5 then gives image tokens 1-D positions")
def test_diffusers_as_shipped_gives_the_multimodal_positions(encoder, diffusers_pipe):
    refs = [noise_image(200, 150, 0)]
    ref = diffusers_embeds(diffusers_pipe, PROMPTS[0], refs)
    np.testing.assert_allclose(encoder.encode([PROMPTS[0]], images=[refs]).embeds, ref, atol=1e-4, rtol=0)


def test_text_only_embeddings_are_the_decoders_alone_and_equal_diffusers(encoder, diffusers_pipe, folder,
                                                                          hf_text_encoder, tmp_path):
    ours = encoder.encode(PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        ref = diffusers_embeds(diffusers_pipe, prompt, None)
        n = ref.shape[1]
        assert ours.mask[row].sum() == n
        np.testing.assert_allclose(ours.embeds[row, :n], ref[0], atol=1e-4, rtol=0)
    # Empty image lists are text only.
    np.testing.assert_array_equal(encoder.encode(PROMPTS, images=[[], []]).embeds, ours.embeds)

    # Today's text-only folders: a Qwen2ForCausalLM holding the same decoder weights gives the same
    # embeddings, bit for bit, and ignores reference images (its template leaves them out).
    text = hf_text_encoder.config.text_config
    lm = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads, rms_norm_eps=text.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0}, tie_word_embeddings=False))
    state = hf_text_encoder.state_dict()
    lm.load_state_dict({k.replace("model.language_model.", "model."): v for k, v in state.items()
                        if not k.startswith("model.visual.")})
    lm.save_pretrained(tmp_path / "lm")
    shutil.copy(folder / "tokenizer" / "tokenizer.json", tmp_path / "lm")
    text_encoder = QwenTextEncoder.from_pretrained(tmp_path / "lm")
    assert not text_encoder.sees_images and encoder.sees_images
    np.testing.assert_array_equal(text_encoder.encode(PROMPTS).embeds, ours.embeds)
    ignored = text_encoder.encode(PROMPTS[:1], images=[[noise_image(64, 64, 0)]])
    np.testing.assert_array_equal(ignored.embeds, text_encoder.encode(PROMPTS[:1]).embeds)


# ----------------------------------------------------------------------------- the pipeline


def test_four_step_edit_with_prompt_strings_equals_the_diffusers_pipeline(diffusers_pipe, folder, encoder, mrope_fix,
                                                                         monkeypatch):
    """diffusers' QwenImageEditPlusPipeline end to end (text encoder with the reference, true CFG
    with the negative " ", 4 steps, the same noise); its VAE resize target shrunk to the
    reference's own 64x64 as in test_qwen_image.py; the text encoder's condition size as released."""
    monkeypatch.setattr(edit_plus, "VAE_IMAGE_SIZE", 64 * 64)
    ref_image = noise_image(64, 64, 3)
    height, width = 48, 64
    noise = np.random.RandomState(0).randn(1, (height // 16) * (width // 16), 64).astype(np.float32)
    kw = dict(image=[ref_image], prompt=PROMPTS[1], negative_prompt=" ", true_cfg_scale=4.0, num_inference_steps=4,
              latents=torch.tensor(noise), height=height, width=width)
    with torch.no_grad():
        ref_latents = diffusers_pipe(**kw, output_type="latent").images.numpy()
        ref_pixels = diffusers_pipe(**kw, output_type="np").images

    ours = QwenImageEditPipeline.from_pretrained(folder, ref_area=64 * 64, text_encoder=encoder)
    prompt = encoder.encode([PROMPTS[1]], images=[[ref_image]])
    negative = encoder.encode([" "], images=[[ref_image]])
    assert prompt.embeds.shape[1] > 196  # 64x64 -> 384x384 -> 392x392: 196 image tokens
    ref_tokens, ref_shapes = ours.encode_references([np.asarray(ref_image, np.float32) / 127.5 - 1])
    latents = ours.sample(jnp.asarray(noise), height, width, ref_tokens, ref_shapes, prompt, negative,
                          num_steps=4, true_cfg_scale=4.0)
    assert np.abs(ref_latents - noise).max() > 0.5
    np.testing.assert_allclose(np.asarray(latents), ref_latents, atol=1e-3, rtol=0)

    images = ours.generate([ref_image], PROMPTS[1], " ", num_steps=4, size=(width, height), noise=jnp.asarray(noise))
    assert images.shape == (1, height, width, 3)
    assert np.abs(images.astype(int) - np.round(ref_pixels * 255)).max() <= 1
    # The text encoder's view of the reference matters: without it the image differs.
    blind = QwenImageEditPipeline.from_pretrained(folder, ref_area=64 * 64)
    text_only = blind.generate([ref_image], encoder.encode([PROMPTS[1]]), encoder.encode([" "]), num_steps=4,
                               size=(width, height), noise=jnp.asarray(noise))
    assert np.abs(text_only.astype(int) - images.astype(int)).max() > 2


# ----------------------------------------------------------------------------- checkpoints


def test_both_tensor_namings_load_as_transformers_loads_them(folder, encoder, hf_text_encoder, tmp_path):
    saved = load_file(folder / "text_encoder" / "model.safetensors")
    assert "visual.blocks.0.attn.qkv.weight" in saved and "model.layers.0.mlp.up_proj.weight" in saved  # what v5 saves
    renamed = tmp_path / "renamed"
    shutil.copytree(folder / "text_encoder", renamed)
    new_names = {("model." + k if k.startswith("visual.") else
                  k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k): v
                 for k, v in saved.items()}
    save_file(new_names, renamed / "model.safetensors", metadata={"format": "pt"})
    reloaded = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(renamed)
    for name, value in hf_text_encoder.state_dict().items():
        np.testing.assert_array_equal(reloaded.state_dict()[name].numpy(), value.numpy(), err_msg=name)

    ours_new = qwen2_5_vl.load_model(renamed)
    ours_old = encoder.model
    old_state = dict(nnx.to_flat_state(nnx.state(ours_old, nnx.Param)))
    new_state = dict(nnx.to_flat_state(nnx.state(ours_new, nnx.Param)))
    assert set(new_state) == set(old_state)
    for path, var in new_state.items():
        np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(old_state[path][...]), err_msg=str(path))
    # Gathered back in a layout: every tensor of the folder, same values.
    back = gather_tensors(ours_new, qwen2_5_vl.checkpoint_layout(ours_new.vl_cfg, new_names))
    assert set(back) == set(new_names)
    for name, value in new_names.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_bad_text_encoder_folders_name_the_tensor_or_field(folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder / "text_encoder", bad)
    tensors = load_file(bad / "model.safetensors")
    cfg = json.loads((bad / "config.json").read_text())

    def write_config(**vision):
        (bad / "config.json").write_text(json.dumps({**cfg, "vision_config": {**cfg["vision_config"], **vision}}))

    write_config(window_size=20)
    with pytest.raises(CheckpointError, match=r"vision_config: window_size=20 must be at least .* 28 pixels"):
        qwen2_5_vl.load_model(bad)
    vision = {k: v for k, v in cfg["vision_config"].items() if k != "depth"}
    (bad / "config.json").write_text(json.dumps({**cfg, "vision_config": vision}))
    with pytest.raises(CheckpointError, match=r"vision_config: required field 'depth' is missing"):
        qwen2_5_vl.load_model(bad)
    rope = {**cfg["text_config"]["rope_parameters"], "mrope_section": [2, 2, 3]}
    text = {**cfg["text_config"], "rope_parameters": rope}
    (bad / "config.json").write_text(json.dumps({**cfg, "text_config": text}))
    with pytest.raises(CheckpointError, match=r"text_config: rope_parameters.mrope_section: .* head_dim / 2 = 6"):
        qwen2_5_vl.load_model(bad)
    write_config()

    tensors["visual.blocks.1.mlp.up_proj.weight"] = tensors["visual.blocks.1.mlp.up_proj.weight"][:16]
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'visual\.blocks\.1\.mlp\.up_proj\.weight' has shape \(16, 32\), "
                                              r"expected \(48, 32\)"):
        qwen2_5_vl.load_model(bad)
    del tensors["visual.blocks.1.mlp.up_proj.weight"]
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensor 'visual\.blocks\.1\.mlp\.up_proj\.weight'"):
        qwen2_5_vl.load_model(bad)
    with pytest.raises(CheckpointError, match=r"missing tensor 'visual\.blocks\.1\.mlp\.up_proj\.weight'"):
        QwenTextEncoder.from_pretrained(bad)
    tensors = load_file(folder / "text_encoder" / "model.safetensors")
    tensors["visual.merger.norm.weight"] = np.ones(32, np.float32)
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'visual\.merger\.norm\.weight'"):
        qwen2_5_vl.load_model(bad)
