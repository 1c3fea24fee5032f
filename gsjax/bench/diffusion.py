"""One Qwen-Image-Edit sampling run, gsjax (jitted) vs diffusers' QwenImageEditPlusPipeline (PyTorch
eager), on the same tiny random weights, reference image, prompt embeddings and initial noise.

    python -m gsjax.bench.diffusion                       # 8 steps, true CFG, 128x128, 2 layers
    python -m gsjax.bench.diffusion --steps 40 --size 256 --repeats 3

Both contenders run the whole call: reference preprocessing and VAE encoding, every denoising step
with true CFG, VAE decoding. diffusers gets the embeddings directly (no text encoder), and its
reference-resize target (1024^2 pixels) is set to the reference's own size, as gsjax's `ref_area`
is. The images must agree before any time is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
from PIL import Image

from gsjax.bench.common import Ratio, interleaved, print_table

# Qwen-Image's own scheduler settings.
SCHEDULER = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, max_image_seq_len=8192, shift_terminal=0.02)
TINY_TRANSFORMER = dict(num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                        axes_dims_rope=(4, 6, 6))
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])


def make_diffusers_parts(seed: int = 0, transformer: dict | None = None, vae: dict | None = None):
    """A random diffusers transformer, VAE and scheduler at a tiny size. Random init leaves norm
    weights at 1 and biases at 0; they are perturbed so that comparisons see them."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    torch.manual_seed(seed)
    parts = (QwenImageTransformer2DModel(**{**TINY_TRANSFORMER, **(transformer or {})}),
             AutoencoderKLQwenImage(**{**TINY_VAE, **(vae or {})}))
    with torch.no_grad():
        for model in parts:
            for name, p in model.named_parameters():
                if "norm" in name or "gamma" in name or name.endswith("bias"):
                    p.add_(0.1 * torch.randn_like(p))
    return parts[0].eval(), parts[1].eval(), FlowMatchEulerDiscreteScheduler(**SCHEDULER)


def save_parts(parts, folder: Path, **kw) -> Path:
    transformer, vae, scheduler = parts
    transformer.save_pretrained(folder / "transformer", **kw)
    vae.save_pretrained(folder / "vae", **kw)
    scheduler.save_pretrained(folder / "scheduler")
    return folder


@dataclasses.dataclass(frozen=True)
class Result:
    ratio: Ratio
    max_pixel_diff: float  # on [0, 1] pixels
    outputs_match: bool


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="output and reference side in pixels (multiple of 16)")
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--text-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from diffusers import QwenImageEditPlusPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as edit_plus

    from gsjax.models.qwen_image import PromptEmbeds, QwenImageEditPipeline

    size = args.size
    parts = make_diffusers_parts(args.seed, transformer=dict(num_layers=args.layers, num_attention_heads=args.heads))
    reference = QwenImageEditPlusPipeline(scheduler=parts[2], vae=parts[1], text_encoder=None, tokenizer=None,
                                          processor=None, transformer=parts[0])
    reference.set_progress_bar_config(disable=True)
    edit_plus.VAE_IMAGE_SIZE = size * size  # the reference is encoded at its own size, as gsjax does below
    with tempfile.TemporaryDirectory() as folder:
        ours = QwenImageEditPipeline.from_pretrained(save_parts(parts, Path(folder)), ref_area=size * size)

    rs = np.random.RandomState(args.seed)
    ref_image = Image.fromarray(rs.randint(0, 256, (size, size, 3), np.uint8))
    dim = TINY_TRANSFORMER["joint_attention_dim"]
    prompt = PromptEmbeds(rs.randn(1, args.text_len, dim).astype(np.float32), np.ones((1, args.text_len), np.int64))
    negative = PromptEmbeds(rs.randn(1, 4, dim).astype(np.float32), np.ones((1, 4), np.int64))
    noise = rs.randn(1, (size // 16) ** 2, 64).astype(np.float32)

    def run_diffusers() -> np.ndarray:
        with torch.no_grad():
            return reference(image=[ref_image], prompt_embeds=torch.tensor(prompt.embeds),
                             prompt_embeds_mask=torch.tensor(prompt.mask),
                             negative_prompt_embeds=torch.tensor(negative.embeds),
                             negative_prompt_embeds_mask=torch.tensor(negative.mask), true_cfg_scale=args.cfg,
                             num_inference_steps=args.steps, latents=torch.tensor(noise), height=size, width=size,
                             output_type="np").images

    noise_j = jnp.asarray(noise)

    def run_gsjax() -> np.ndarray:  # np.asarray inside: returns when the image is on the host
        return ours.generate([ref_image], prompt, negative, num_steps=args.steps, true_cfg_scale=args.cfg,
                             size=(size, size), noise=noise_j)

    torch_pixels = run_diffusers()[0]
    jax_pixels = run_gsjax()[0].astype(np.float32) / 255
    diff = float(np.abs(np.round(torch_pixels * 255) / 255 - jax_pixels).max())
    match = diff <= 1.5 / 255  # uint8 rounding of values that agree to ~1e-6
    print(f"Qwen-Image-Edit tiny: {args.layers} layers, {args.heads} heads, {size}x{size}, {args.steps} steps, "
          f"true CFG {args.cfg}, torch threads {torch.get_num_threads()}")
    print(f"images agree: {match} (max pixel difference {diff * 255:.2f} / 255)")
    timings = interleaved({"gsjax (jit)": run_gsjax, "diffusers (torch eager)": run_diffusers},
                          repeats=args.repeats, warmup=args.warmup)
    ratios = print_table(list(timings.values()), work=1.0, unit="img", baseline="diffusers (torch eager)")
    return Result(ratios["gsjax (jit)"], diff, match)


if __name__ == "__main__":
    main()
