"""gsjax's Qwen-Image (transformer, VAE, scheduler, edit pipeline) against diffusers (PyTorch) on
tiny random models that diffusers creates and saves."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline, QwenImageTransformer2DModel
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as diffusers_edit_plus
from PIL import Image
from qwen_image_fixtures import SCHEDULER, make_diffusers_parts, save_parts

from gsjax.models.hf_io import CheckpointError
from gsjax.models.qwen_image import PromptEmbeds, QwenImageEditPipeline, load_transformer, load_vae, schedule
from gsjax.models.qwen_image.pipeline import preprocess
from gsjax.models.qwen_image.scheduler import euler_step, scheduler_config_from_diffusers

IMG_SHAPES = ((1, 4, 6), (1, 2, 4))  # the noisy latents, then one reference, in patches


@pytest.fixture(scope="module")
def parts():
    return make_diffusers_parts()


@pytest.fixture(scope="module")
def folder(parts, tmp_path_factory):
    return save_parts(parts, tmp_path_factory.mktemp("qwen_image"))


def _transformer_inputs(seed=0):
    rs = np.random.RandomState(seed)
    seq = sum(f * h * w for f, h, w in IMG_SHAPES)
    latents = rs.randn(2, seq, 64).astype(np.float32)
    text = rs.randn(2, 7, 24).astype(np.float32)
    mask = np.ones((2, 7), bool)
    mask[1, 5:] = False  # the second prompt is padded
    return latents, text, mask, np.array([0.7, 0.25], np.float32)


def _torch_transformer(model, latents, text, mask, t):
    with torch.no_grad():
        return model(hidden_states=torch.tensor(latents), encoder_hidden_states=torch.tensor(text),
                     encoder_hidden_states_mask=torch.tensor(mask), timestep=torch.tensor(t),
                     img_shapes=[list(IMG_SHAPES)] * len(latents), return_dict=False)[0].numpy()


def _ours_transformer(model, latents, text, mask, t):
    return np.asarray(model(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(mask), jnp.asarray(t), IMG_SHAPES))


def test_transformer_matches_diffusers_fp32(parts, folder):
    inputs = _transformer_inputs()
    ref = _torch_transformer(parts[0], *inputs)
    ours = _ours_transformer(load_transformer(folder / "transformer"), *inputs)
    assert ref.std() > 0.1  # a real signal, not an all-zero output
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_padded_text_positions_do_not_change_the_image_output(folder):
    latents, text, mask, t = _transformer_inputs(1)
    changed = text.copy()
    changed[:, 5:] += 5.0  # padding in row 1, real tokens in row 0
    ours = load_transformer(folder / "transformer")
    a, b = _ours_transformer(ours, latents, text, mask, t), _ours_transformer(ours, latents, changed, mask, t)
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)
    assert np.abs(a[0] - b[0]).max() > 1e-3  # the same change on unpadded positions does matter


def test_exported_transformer_loads_in_diffusers_with_same_output(folder, tmp_path):
    ours = load_transformer(folder / "transformer")
    pipe = QwenImageEditPipeline(ours, load_vae(folder / "vae"), scheduler_config_from_diffusers(SCHEDULER, "x"))
    pipe.save_pretrained(tmp_path / "export", max_shard_bytes=40_000)  # several shards + an index
    assert (tmp_path / "export/transformer/diffusion_pytorch_model.safetensors.index.json").is_file()
    reloaded = QwenImageTransformer2DModel.from_pretrained(tmp_path / "export/transformer").eval()
    inputs = _transformer_inputs(2)
    np.testing.assert_allclose(_torch_transformer(reloaded, *inputs), _ours_transformer(ours, *inputs), atol=1e-5, rtol=0)
    vae = AutoencoderKLQwenImage.from_pretrained(tmp_path / "export/vae")
    assert vae.config.base_dim == 8 and vae.config.z_dim == 16
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "export/scheduler")
    assert sched.config.shift_terminal == SCHEDULER["shift_terminal"]


def test_vae_encode_and_decode_match_diffusers(parts, folder):
    vae = load_vae(folder / "vae")
    rs = np.random.RandomState(0)
    images = rs.uniform(-1, 1, (2, 32, 48, 3)).astype(np.float32)
    with torch.no_grad():
        ref = parts[1].encode(torch.tensor(images).permute(0, 3, 1, 2)[:, :, None]).latent_dist.mode()
    ref = ref[:, :, 0].permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(vae.encode(jnp.asarray(images))), ref, atol=1e-4, rtol=0)

    latents = rs.randn(2, 4, 6, 16).astype(np.float32)
    with torch.no_grad():
        ref = parts[1].decode(torch.tensor(latents).permute(0, 3, 1, 2)[:, :, None]).sample
    ref = ref[:, :, 0].permute(0, 2, 3, 1).numpy()
    assert ref.std() > 0.05
    np.testing.assert_allclose(np.asarray(vae.decode(jnp.asarray(latents))), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("config", [SCHEDULER, dict(shift=3.0), dict(use_dynamic_shifting=True, time_shift_type="linear")],
                         ids=["qwen-image", "static-shift", "linear-shift"])
def test_scheduler_timesteps_and_steps_are_exact(config):
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_shift

    ref = FlowMatchEulerDiscreteScheduler(**config)
    cfg = scheduler_config_from_diffusers(dict(ref.config), "scheduler_config.json")
    for steps, seq in [(4, 48), (40, 8192), (7, 300)]:
        c = ref.config
        mu = calculate_shift(seq, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
        ref.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        timesteps, sigmas = schedule(cfg, steps, seq)
        assert np.array_equal(ref.timesteps.numpy(), timesteps)
        assert np.array_equal(ref.sigmas.numpy(), sigmas)
        ref.set_begin_index(0)
        x = torch.randn(1, 5, 8)
        ours = x.numpy()
        for i in range(steps):
            v = torch.randn(1, 5, 8)
            x = ref.step(v, ref.timesteps[i], x, return_dict=False)[0]
            ours = np.asarray(euler_step(jnp.asarray(v.numpy()), sigmas[i], sigmas[i + 1], jnp.asarray(ours)))
            assert np.array_equal(x.numpy(), ours)


def test_four_step_edit_sample_matches_the_diffusers_pipeline(parts, folder, monkeypatch):
    """diffusers' QwenImageEditPlusPipeline itself, with prompt embeddings passed in (no text
    encoder), one 64x64 reference and the same initial noise; its reference resize target
    (VAE_IMAGE_SIZE, 1024^2) is shrunk to the reference's own 64x64 so the test stays tiny."""
    monkeypatch.setattr(diffusers_edit_plus, "VAE_IMAGE_SIZE", 64 * 64)
    monkeypatch.setattr(diffusers_edit_plus, "CONDITION_IMAGE_SIZE", 32 * 32)
    transformer, vae, scheduler = parts
    pipe = QwenImageEditPlusPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, processor=None,
                                     transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    rs = np.random.RandomState(0)
    ref_image = Image.fromarray(rs.randint(0, 256, (64, 64, 3), np.uint8))
    height, width = 48, 64
    prompt = PromptEmbeds(rs.randn(1, 6, 24).astype(np.float32), np.array([[1, 1, 1, 1, 1, 0]]))
    negative = PromptEmbeds(rs.randn(1, 4, 24).astype(np.float32), np.ones((1, 4), np.int64))
    noise = rs.randn(1, (height // 16) * (width // 16), 64).astype(np.float32)
    kw = dict(image=[ref_image], prompt_embeds=torch.tensor(prompt.embeds), prompt_embeds_mask=torch.tensor(prompt.mask),
              negative_prompt_embeds=torch.tensor(negative.embeds), negative_prompt_embeds_mask=torch.tensor(negative.mask),
              true_cfg_scale=4.0, num_inference_steps=4, latents=torch.tensor(noise), height=height, width=width)
    with torch.no_grad():
        ref_latents = pipe(**kw, output_type="latent").images.numpy()
        ref_pixels = pipe(**kw, output_type="np").images

    ours = QwenImageEditPipeline.from_pretrained(folder, ref_area=64 * 64)
    ref_tokens, ref_shapes = ours.encode_references([preprocess(ref_image, 64, 64)])
    latents = ours.sample(jnp.asarray(noise), height, width, ref_tokens, ref_shapes, prompt, negative,
                          num_steps=4, true_cfg_scale=4.0)
    assert np.abs(ref_latents - noise).max() > 0.5  # the four steps moved the latents
    np.testing.assert_allclose(np.asarray(latents), ref_latents, atol=1e-3, rtol=0)
    pixels = ours.decode(latents, height, width) / 2 + 0.5
    np.testing.assert_allclose(np.clip(pixels, 0, 1), ref_pixels, atol=1e-3, rtol=0)

    images = ours.generate([ref_image], prompt, negative, num_steps=4, size=(width, height), noise=jnp.asarray(noise))
    assert images.dtype == np.uint8 and images.shape == (1, height, width, 3)
    assert np.abs(images.astype(int) - np.round(ref_pixels * 255)).max() <= 1


def test_sharded_diffusers_folder_loads(parts, tmp_path):
    folder = save_parts(parts, tmp_path / "sharded", max_shard_size="30KB")
    assert (folder / "transformer/diffusion_pytorch_model.safetensors.index.json").is_file()
    inputs = _transformer_inputs(3)
    np.testing.assert_allclose(_ours_transformer(load_transformer(folder / "transformer"), *inputs),
                               _torch_transformer(parts[0], *inputs), atol=1e-4, rtol=0)


def test_bad_folders_name_the_field_or_tensor(folder, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(folder / "transformer", bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "zero_cond_t": True}))
    with pytest.raises(CheckpointError, match=r"field 'zero_cond_t' is True; gsjax supports only False"):
        load_transformer(bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    weights = bad / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["transformer_blocks.1.attn.to_k.weight"] = tensors["transformer_blocks.1.attn.to_k.weight"][:16]
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=r"'transformer_blocks\.1\.attn\.to_k\.weight' has shape \(16, 32\), expected \(32, 32\)"):
        load_transformer(bad)
    del tensors["transformer_blocks.1.attn.to_k.weight"]
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=r"missing tensor 'transformer_blocks\.1\.attn\.to_k\.weight'"):
        load_transformer(bad)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_vae(tmp_path)
