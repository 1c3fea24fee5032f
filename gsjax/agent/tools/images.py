"""Image download and the image file cache.

A downloaded image is kept only if its bytes are at least `min_bytes` (1 KB, as the reference) and
PIL can decode it; it is stored as an RGB JPEG (quality 85; transparency over white) at
`cache_dir/md5(url).jpg`, the file the policy is shown. A valid file already there is reused
without downloading: this is the image cache.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path

from PIL import Image

from gsjax.agent.tools.base import FetchedImage, ToolFailure
from gsjax.agent.tools.http import HttpClient

MIN_IMAGE_BYTES = 1024
MAX_IMAGE_PIXELS = 40_000_000  # refuse decompression bombs before decoding
JPEG_QUALITY = 85


class HttpImageFetcher:
    """GET an image URL (policy-checked, every redirect hop too), within `deadline_s`."""

    def __init__(self, client: HttpClient, *, deadline_s: float = 30.0, max_bytes: int = 20 * 2**20) -> None:
        self.client = client
        self.deadline_s = deadline_s
        self.max_bytes = max_bytes

    def fetch(self, url: str) -> FetchedImage:
        resp = self.client.get(url, headers={"Accept": "image/*,*/*;q=0.5"}, deadline_s=self.deadline_s,
                               max_bytes=self.max_bytes)
        return FetchedImage(resp.body, resp.content_type)


def cache_path(cache_dir: str | Path, url: str) -> Path:
    return Path(cache_dir) / f"{hashlib.md5(url.encode()).hexdigest()}.jpg"


def is_valid_image_file(path: Path, min_bytes: int = MIN_IMAGE_BYTES) -> bool:
    try:
        if path.stat().st_size < min_bytes:
            return False
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many types for a bad file
        return False


def store_image(fetched: FetchedImage, path: Path, min_bytes: int = MIN_IMAGE_BYTES) -> None:
    """Validate downloaded bytes and write them to `path` as RGB JPEG; ToolFailure if not an image."""
    kind = fetched.content_type.split(";")[0].strip().lower()
    if kind and not kind.startswith("image/") and kind != "application/octet-stream":
        raise ToolFailure(f"not an image (Content-Type {kind})")
    if len(fetched.data) < min_bytes:
        raise ToolFailure(f"image too small ({len(fetched.data)} bytes, minimum {min_bytes})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(fetched.data)) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise ToolFailure(f"image too large ({im.width}x{im.height} pixels)")
                im.load()
                rgb = _to_rgb(im)
    except ToolFailure:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad data
        raise ToolFailure(f"not a readable image ({type(e).__name__})") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            rgb.save(f, format="JPEG", quality=JPEG_QUALITY)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")
