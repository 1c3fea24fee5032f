"""Serve the JAX Qwen-Image-Edit pipeline over the reference's `POST /generate` API, so one
accelerator host serves many rollout workers (their `HttpGenerator` points at it unchanged).

    python -m gsjax.serve_generator --model /ckpt/Qwen-Image-Edit-2509 --port 8000   # its text_encoder/ (Qwen2.5-VL)
    python -m gsjax.serve_generator --tiny --port 8000      # random tiny pipeline (CPU, for trying it out)

Request (reference-spec.md section 3): `{"image_urls": ["data:image/...;base64,..." | "http(s)://..."],
"prompt", "seed": 0, "true_cfg_scale": 4.0, "negative_prompt": " ", "num_inference_steps": 40,
"guidance_scale": 1.0, "num_images_per_prompt": 1}`. Reply: `{"success": true, "image": <base64
PNG>}`, or `{"success": false, "message": ...}` for anything wrong (bad JSON or field, an image
that does not decode, a generation error): the server itself never goes down. Requests are
handled on threads and generate one at a time (the pipeline holds the accelerators).
`guidance_scale` is accepted and ignored, as the reference's model is not guidance-distilled.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from PIL import Image

from gsjax.fileio import BackgroundServer
from gsjax.httpd import OwnedServer, json_reply, serve_until_stopped
from gsjax.rewards.generator_http import EditSettings
from gsjax.rewards.generator_jax import JaxGenerator

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 256 * 2**20


class BadRequest(ValueError):
    """A request the API refuses; the message goes back to the client."""


def _field(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key, default)
    ok = isinstance(value, kind) and not isinstance(value, bool) if kind in (int, float) else isinstance(value, kind)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise BadRequest(f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def parse_request(body: Any) -> tuple[list[str], str, int, EditSettings]:
    """(image URLs, prompt, seed, settings) of a /generate body, or BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest(f"the body is a JSON {type(body).__name__}, expected an object")
    urls = body.get("image_urls")
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise BadRequest("field 'image_urls' is required: a list of data: or http(s) URLs")
    prompt = _field(body, "prompt", str, None)
    settings = EditSettings(
        true_cfg_scale=_field(body, "true_cfg_scale", float, 4.0),
        negative_prompt=_field(body, "negative_prompt", str, " "),
        num_inference_steps=_field(body, "num_inference_steps", int, 40),
        guidance_scale=_field(body, "guidance_scale", float, 1.0),
        num_images_per_prompt=_field(body, "num_images_per_prompt", int, 1),
    )
    if not 1 <= settings.num_inference_steps <= 1000:
        raise BadRequest(f"field 'num_inference_steps' is {settings.num_inference_steps}; expected 1..1000")
    if settings.num_images_per_prompt != 1:
        raise BadRequest(f"field 'num_images_per_prompt' is {settings.num_images_per_prompt}; only 1 is supported")
    return urls, prompt, _field(body, "seed", int, 0), settings


def load_image(url: str) -> Image.Image:
    """An RGB image from a data: URL (any image type, base64) or an http(s) URL."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise BadRequest(f"image URL {url[:40]!r}...: only base64 data URLs are accepted")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("an image data URL is not valid base64") from None
    elif url.startswith(("http://", "https://")):
        from gsjax.agent.tools.http import HttpClient, HttpConfig, HttpFailure

        try:
            raw = HttpClient(HttpConfig(max_body_bytes=MAX_BODY_BYTES)).get(url).content
        except HttpFailure as e:
            raise BadRequest(f"cannot fetch image {url}: {e}") from None
    else:
        raise BadRequest(f"image URL {url[:40]!r} is neither a data: nor an http(s) URL")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            return img.convert("RGB")
    except Exception:  # PIL raises several kinds
        raise BadRequest(f"an image URL holds {len(raw)} bytes that are not a readable image") from None


class GeneratorServer(BackgroundServer):
    def __init__(self, generator: JaxGenerator, *, host: str = "127.0.0.1", port: int = 0, path: str = "/generate"):
        self.generator, self.path = generator, path
        self.served = 0
        self.failures = 0
        self._count_lock = threading.Lock()
        self._http = OwnedServer((host, port), self)
        self.port = self._http.server_address[1]
        self.url = f"http://{host}:{self.port}"

    reply = staticmethod(json_reply)

    def handle_get(self, h: BaseHTTPRequestHandler) -> None:
        self.reply(h, 404, {"success": False, "message": f"POST {self.path} only"})

    def handle_post(self, h: BaseHTTPRequestHandler) -> None:
        if h.path.split("?")[0].rstrip("/") != self.path.rstrip("/"):
            self.reply(h, 404, {"success": False, "message": f"unknown path {h.path}; POST {self.path}"})
            return
        try:
            payload = self._generate(h)
        except BadRequest as e:
            payload = {"success": False, "message": str(e)}
        except Exception as e:  # a generation error: reported, the server stays up
            log.exception("generation failed")
            payload = {"success": False, "message": f"{type(e).__name__}: {e}"}
        with self._count_lock:
            self.served += 1
            self.failures += not payload["success"]
        self.reply(h, 200, payload)

    def _generate(self, h: BaseHTTPRequestHandler) -> dict[str, Any]:
        length = int(h.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            h.close_connection = True
            raise BadRequest(f"the body is {length} bytes; at most {MAX_BODY_BYTES} are accepted")
        try:
            body = json.loads(h.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the body is not JSON ({e})") from None
        urls, prompt, seed, settings = parse_request(body)
        image = self.generator.render([load_image(u) for u in urls], prompt, seed, settings)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return {"success": True, "image": base64.b64encode(buf.getvalue()).decode("ascii")}


# ----------------------------------------------------------------------------- pipelines


def tiny_pipeline(seed: int = 0):
    """A random tiny Qwen-Image-Edit pipeline with a random tiny Qwen2-layout text encoder and a
    byte-level BPE: real code paths, noise images, CPU seconds."""
    from flax import nnx

    from gsjax.models.qwen3 import Qwen3, tiny_config
    from gsjax.models.qwen_image import QwenImageEditPipeline, TransformerConfig, VAEConfig
    from gsjax.models.qwen_image.text_encoder import EDIT_TEMPLATE, QwenTextEncoder
    from gsjax.tokenizer import Tokenizer

    tokenizer = Tokenizer.train_bpe([EDIT_TEMPLATE, "a red fox on a banner, the emblem of a team"], 384)
    lm = Qwen3(tiny_config(vocab_size=tokenizer.vocab_size, hidden_size=32, num_heads=2, num_kv_heads=1,
                           family="qwen2", qk_norm=False), rngs=nnx.Rngs(seed))
    transformer = TransformerConfig(num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                    axes_dims_rope=(4, 6, 6))
    return QwenImageEditPipeline.random(transformer, VAEConfig(base_dim=8, num_res_blocks=1), seed=seed,
                                        text_encoder=QwenTextEncoder(lm, tokenizer, max_length=256),
                                        output_area=64 * 64, ref_area=64 * 64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a diffusers Qwen-Image-Edit folder (transformer/, vae/, scheduler/)")
    parser.add_argument("--text-encoder", help="the text encoder: a Qwen2.5-VL folder (or a Qwen2-layout "
                        "causal-LM folder, text only) with tokenizer.json; default: --model's text_encoder/")
    parser.add_argument("--tiny", action="store_true", help="serve a random tiny pipeline instead")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size (the rest of the devices: fsdp)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.tiny:
        generator = JaxGenerator(tiny_pipeline())
    elif args.model:
        generator = JaxGenerator.from_folders(args.model, args.text_encoder or args.model, dtype=args.dtype, tp=args.tp)
    else:
        parser.error("give --model (and optionally --text-encoder), or --tiny")
    server = GeneratorServer(generator, host=args.host, port=args.port).start()
    log.info("serving POST %s/generate", server.url)
    serve_until_stopped(server)


if __name__ == "__main__":
    main()
