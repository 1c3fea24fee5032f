"""The `jax` image generator: Qwen-Image-Edit in this process (gsjax.models.qwen_image).

    gen = JaxGenerator(QwenImageEditPipeline.from_pretrained(folder, mesh, dtype="bfloat16",
                                                             text_encoder=encoder))
    result = gen.generate(GenRequest(prompt, ref_paths, seed=0), Path("out/sample.png"))

Sampling settings are the reference server's (`EditSettings`: 40 steps, true CFG 4.0 with
negative prompt " "). Calls are serialised with a lock: one pipeline drives one accelerator set,
and many reward workers (or `python -m gsjax.serve_generator` clients) queue on it. Every failure
(unreadable reference, no text encoder, a pipeline error) comes back as `GenResult(None, reason)`.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from gsjax.fileio import atomic_write
from gsjax.rewards.generator import GenRequest, GenResult
from gsjax.rewards.generator_http import EditSettings


class JaxGenerator:
    def __init__(self, pipeline, settings: EditSettings = EditSettings()):
        if settings.num_images_per_prompt != 1:
            raise ValueError(f"num_images_per_prompt={settings.num_images_per_prompt}: only 1 is supported")
        self.pipeline, self.settings = pipeline, settings
        self._lock = threading.Lock()

    @classmethod
    def from_folders(cls, model: str, text_encoder: str, *, dtype: str = "bfloat16", tp: int = 1,
                     settings: EditSettings = EditSettings()) -> "JaxGenerator":
        """A diffusers Qwen-Image-Edit folder (transformer/, vae/, scheduler/) and a text encoder
        (`QwenTextEncoder.from_pretrained`: a pipeline folder's text_encoder/, a Qwen2.5-VL folder,
        or a Qwen2-layout causal-LM folder, which cannot see the references), on all devices:
        tensor parallelism `tp`, fsdp over the rest."""
        from gsjax.models.qwen_image import QwenImageEditPipeline
        from gsjax.models.qwen_image.text_encoder import QwenTextEncoder
        from gsjax.parallel import make_mesh

        mesh = make_mesh({"fsdp": -1, "tp": tp})
        encoder = QwenTextEncoder.from_pretrained(text_encoder, mesh, dtype=dtype)
        return cls(QwenImageEditPipeline.from_pretrained(model, mesh, dtype=dtype, text_encoder=encoder), settings)

    def render(self, references: Sequence[Image.Image], prompt: str, seed: int,
               settings: EditSettings | None = None) -> Image.Image:
        """One image for `prompt` and the reference images (raises on failure)."""
        s = settings or self.settings
        negative = s.negative_prompt if s.true_cfg_scale > 1 else None
        with self._lock:
            pixels = self.pipeline.generate(list(references), prompt, negative, num_steps=s.num_inference_steps,
                                            true_cfg_scale=s.true_cfg_scale, seed=seed)
        return Image.fromarray(pixels[0])

    def generate(self, request: GenRequest, out_path: Path) -> GenResult:
        start = time.perf_counter()
        try:
            refs = []
            for p in request.ref_paths:
                try:
                    with Image.open(p) as img:
                        refs.append(img.convert("RGB"))
                except OSError as e:
                    return GenResult(None, f"jax generator: cannot read reference image {p}: {e}",
                                     time.perf_counter() - start)
            image = self.render(refs, request.prompt, request.seed)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            atomic_write(Path(out_path), buf.getvalue())
        except Exception as e:  # a pipeline failure is a recorded failure, never a crash
            return GenResult(None, f"jax generator: {type(e).__name__}: {e}", time.perf_counter() - start)
        return GenResult(str(out_path), None, time.perf_counter() - start)
