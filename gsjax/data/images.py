"""Qwen3-VL image preprocessing in NumPy and Pillow, equal to Hugging Face's processor.

`preprocess(images, cfg)` returns what `transformers`' Qwen3-VL image processor returns for still
images (`Qwen2VLImageProcessorPil`, transformers 5.23, the class `AutoImageProcessor` picks for a
Qwen3-VL checkpoint when torchvision is not installed, as in gsjax's environment):
  pixel_values [N_patches, 3 * T * p * p] float32, grid_thw [N_images, 3] int64,
bit for bit. Each image, in order:
1. RGB: a file path is opened, EXIF-transposed and `convert("RGB")`-ed (HF's `load_image`, which
   drops alpha); a PIL image with alpha (an "A" band or a `transparency` entry) is composited onto
   white, any other PIL mode is `convert("RGB")`-ed; a NumPy HxWxC uint8 array with C=1 is repeated
   to 3 channels, C=4 is blended onto white in float64 and rounded (HF's `convert_to_rgb`).
2. Resize to `smart_resize(h, w, patch_size * merge_size, min_pixels, max_pixels)` with Pillow's
   filter `cfg.resample` (BICUBIC).
3. `float32(float64(x) * rescale_factor)`, then `(x - mean) / std` in float32.
4. Patches: the grid is (1, H/p, W/p); rows run over merge_size x merge_size blocks of patches in
   raster order, and over the patches of a block in raster order inside it; each row is the patch
   as (channel, time, y, x), the still frame repeated `temporal_patch_size` times.

With torchvision installed, `AutoImageProcessor` picks the torchvision class instead
(`Qwen2VLImageProcessor`; the reference's verl trainer loads it with use_fast=True). Only its
resize differs: torch's uint8 antialiased bicubic (torchvision 0.28 on CPU) is within 1-2 uint8
levels of Pillow's on under 1% of pixels when both sides grow or both shrink, but where one side
grows and the other shrinks (smart_resize often does that: 1000x700 -> 992x704) it differs on
10-30% of pixels, by up to 2 levels on smooth images and up to ~25 on pixel noise. A resize to the
same size is a no-op in both, so images already sized by `fit_pixels` (multiples of 32, at least
65,536 pixels) come out equal.

`fit_pixels` is the reference agent's own downscaling of an image before the processor sees it
(Gen-Searcher's rollout calls `qwen_vl_utils.fetch_image` with max_pixels=160,000);
`llamafactory_fit` is its SFT's (LLaMA-Factory's `image_max_pixels: 160000`, another rule).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

ImageLike = Union[Image.Image, np.ndarray, str, os.PathLike]

IMAGE_PAD = "<|image_pad|>"
MAX_ASPECT_RATIO = 200  # HF's and qwen_vl_utils' limit on max(h, w) / min(h, w)
# Gen-Searcher's rollout caps tool and prompt images at this many pixels (QWEN_VL_MAX_PIXELS).
REFERENCE_MAX_PIXELS = 160_000
# Pillow's filter numbers, as preprocessor_config.json writes `resample`.
RESAMPLE_NAMES = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def smart_resize(height: int, width: int, factor: int = 32, min_pixels: int = 65_536,
                 max_pixels: int = 16_777_216) -> tuple[int, int]:
    """(h, w) that HF's Qwen2-VL/Qwen3-VL processor resizes a `height` x `width` image to.

    Both sides are multiples of `factor`. Each side is rounded to the nearest multiple (Python's
    round: halves go to even); if the area is then above `max_pixels`, the image is scaled by
    sqrt(max_pixels / area) and each side floored to a multiple (at least `factor`); if below
    `min_pixels`, scaled by sqrt(min_pixels / area) and each side ceiled. The `factor` floor can
    leave the area above `max_pixels` for a very thin image, as in HF.
    """
    height, width = _check_size("height", height), _check_size("width", width)
    factor = _check_size("factor", factor)
    min_pixels, max_pixels = _check_size("min_pixels", min_pixels), _check_size("max_pixels", max_pixels)
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"a {height}x{width} (height x width) image has aspect ratio {ratio:.1f}; "
                         f"Qwen-VL's smart_resize allows at most {MAX_ASPECT_RATIO}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# ---- config ---------------------------------------------------------------------------------------

# Keys of a Qwen2-VL/Qwen3-VL preprocessor_config.json that the image processor ignores for still
# images (bookkeeping, or options Qwen2-VL's `_preprocess` never reads).
_IGNORED_KEYS = frozenset({
    "image_processor_type", "processor_class", "auto_map", "feature_extractor_type",
    "default_to_square", "data_format", "input_data_format", "device", "return_tensors",
    "disable_grouping", "image_seq_length", "do_center_crop", "crop_size", "do_pad", "pad_size",
})
# Steps gsjax always does; a config that switches one off is refused rather than half-followed.
_REQUIRED_TRUE = ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb")
_INT_KEYS = ("patch_size", "temporal_patch_size", "merge_size")


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """The processor's settings; the defaults are Qwen3-VL's preprocessor_config.json
    (`size = {"shortest_edge": 65536, "longest_edge": 16777216}`, mean = std = 0.5, Pillow BICUBIC,
    rescale 1/255)."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 65_536
    max_pixels: int = 16_777_216
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    resample: int = 3  # Pillow's filter number: BICUBIC

    def __post_init__(self) -> None:
        for name in (*_INT_KEYS, "min_pixels", "max_pixels"):
            _check_size(name, getattr(self, name))
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) must not exceed max_pixels ({self.max_pixels})")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, float) and math.isfinite(v) for v in value):
                raise ValueError(f"{name} must be 3 finite floats (one per RGB channel), got {value!r}")
        if any(v == 0.0 for v in self.image_std):
            raise ValueError(f"image_std must not hold a zero, got {self.image_std!r}")
        if not (isinstance(self.rescale_factor, float) and self.rescale_factor > 0):
            raise ValueError(f"rescale_factor must be a positive float, got {self.rescale_factor!r}")
        if isinstance(self.resample, bool) or self.resample not in RESAMPLE_NAMES:
            raise ValueError(f"resample must be a Pillow filter number {sorted(RESAMPLE_NAMES)} "
                             f"({', '.join(f'{k}={v}' for k, v in RESAMPLE_NAMES.items())}), got {self.resample!r}")

    @property
    def factor(self) -> int:
        """Both resized sides are multiples of this: patch_size * merge_size."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Length of one pixel_values row: 3 * temporal_patch_size * patch_size**2."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], source: str = "preprocessor_config.json") -> ImageProcessorConfig:
        """Reads a checkpoint's preprocessor_config.json (as a dict). Pixel bounds come from
        `size.shortest_edge` / `size.longest_edge`; top-level `min_pixels` / `max_pixels` override
        them, as in HF. Errors name `source` and the field."""
        if not isinstance(config, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(config).__name__}")
        known = {*_INT_KEYS, *_REQUIRED_TRUE, "size", "min_pixels", "max_pixels", "image_mean",
                 "image_std", "rescale_factor", "resample"}
        for key in config:
            if key not in known and key not in _IGNORED_KEYS:
                near = difflib.get_close_matches(str(key), sorted(known), n=3, cutoff=0.6)
                hint = f"; nearest valid keys: {', '.join(near)}" if near else f"; valid keys: {', '.join(sorted(known))}"
                raise ValueError(f"{source}: unknown key {key!r}{hint}")
        for key in _REQUIRED_TRUE:
            if key in config and config[key] is not True:
                raise ValueError(f"{source}: {key} must be true (gsjax always does this step), got {config[key]!r}")

        kw: dict[str, Any] = {}
        for key in _INT_KEYS:
            if key in config:
                kw[key] = _field_int(config[key], source, key)
        min_pixels, max_pixels = cls.min_pixels, cls.max_pixels
        if "size" in config:
            size = config["size"]
            if not isinstance(size, Mapping) or "shortest_edge" not in size or "longest_edge" not in size:
                raise ValueError(f"{source}: size must be an object with shortest_edge and longest_edge "
                                 f"(min and max pixels), got {size!r}")
            min_pixels = _field_int(size["shortest_edge"], source, "size.shortest_edge")
            max_pixels = _field_int(size["longest_edge"], source, "size.longest_edge")
        if "min_pixels" in config and config["min_pixels"] is not None:
            min_pixels = _field_int(config["min_pixels"], source, "min_pixels")
        if "max_pixels" in config and config["max_pixels"] is not None:
            max_pixels = _field_int(config["max_pixels"], source, "max_pixels")
        kw["min_pixels"], kw["max_pixels"] = min_pixels, max_pixels
        for key in ("image_mean", "image_std"):
            if key in config:
                kw[key] = _field_triple(config[key], source, key)
        if "rescale_factor" in config:
            value = config["rescale_factor"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{source}: rescale_factor must be a positive number, got {value!r}")
            kw["rescale_factor"] = float(value)
        if "resample" in config:
            kw["resample"] = _field_int(config["resample"], source, "resample", allow_zero=True)
        try:
            return cls(**kw)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e


def _field_int(value: object, source: str, key: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"{source}: {key} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")
    return value


def _field_triple(value: object, source: str, key: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return tuple(float(v) for v in value)  # type: ignore[return-value]
    raise ValueError(f"{source}: {key} must be a number or a list of 3 numbers (R, G, B), got {value!r}")


# ---- loading --------------------------------------------------------------------------------------

def _describe(item: object, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return f"image {index} ({os.fspath(item)!r})"
    return f"image {index}"


def _open_path(path: str | os.PathLike, what: str, exif_transpose: bool) -> Image.Image:
    """The file's image, fully read (EXIF-transposed if asked); unreadable files raise ValueError
    naming `what`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{what}: no such file")
    try:
        with Image.open(path) as opened:
            return ImageOps.exif_transpose(opened) if exif_transpose else opened.copy()
    except Exception as e:  # Pillow raises several types (UnidentifiedImageError, OSError, ...)
        raise ValueError(f"{what}: cannot be read as an image ({type(e).__name__}: {e})") from e


def _pil_rgb(image: Image.Image) -> np.ndarray:
    """HF's `convert_to_rgb` for a PIL image: alpha (a band or a transparency entry) goes onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"))


def _array_rgb(array: np.ndarray, what: str) -> np.ndarray:
    """HF's `convert_to_rgb` for an HxWxC uint8 array (HxW is taken as HxWx1)."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"{what}: expected a uint8 array of shape HxW or HxWxC with C in (1, 3, 4), "
                         f"got {array.dtype} array of shape {array.shape}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        alpha = array[..., 3:4] / 255
        return np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return array


def load_rgb(image: ImageLike, index: int = 0) -> np.ndarray:
    """One image as the HxWx3 uint8 array HF's processor resizes (step 1 of the module docstring)."""
    what = _describe(image, index)
    if isinstance(image, (str, os.PathLike)):
        # HF's load_image: EXIF orientation applied, then a plain convert("RGB").
        rgb = _pil_rgb(_open_path(image, what, exif_transpose=True).convert("RGB"))
    elif isinstance(image, Image.Image):
        try:
            rgb = _pil_rgb(image)
        except Exception as e:
            raise ValueError(f"{what}: cannot convert a PIL image of mode {image.mode!r} to RGB ({e})") from e
    elif isinstance(image, np.ndarray):
        rgb = _array_rgb(image, what)
    else:
        raise ValueError(f"{what}: expected a PIL image, a uint8 HxWxC NumPy array or a file path, "
                         f"got {type(image).__name__}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"{what}: image has no pixels (shape {rgb.shape})")
    return rgb


# ---- preprocessing --------------------------------------------------------------------------------

def _normalize_table(cfg: ImageProcessorConfig) -> np.ndarray:
    """[3, 256] float32: HF's rescale (float64 product, cast to float32) then normalize (float32) of
    every uint8 value per channel; looking it up gives the same bits as computing it per pixel."""
    values = np.arange(256, dtype=np.uint8)
    scaled = (values.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    mean = np.asarray(cfg.image_mean, dtype=np.float32)[:, None]
    std = np.asarray(cfg.image_std, dtype=np.float32)[:, None]
    return (scaled[None, :] - mean) / std


def _patchify(image: np.ndarray, cfg: ImageProcessorConfig) -> np.ndarray:
    """[H, W, C] -> [H/p * W/p, C * T * p * p] in HF's order (see the module docstring)."""
    height, width, channels = image.shape
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gh, gw = height // p, width // p
    blocks = image.reshape(gh // m, m, p, gw // m, m, p, channels)
    blocks = blocks.transpose(0, 3, 1, 4, 6, 2, 5)  # (gh/m, gw/m, m, m, C, p, p)
    frames = np.broadcast_to(blocks[:, :, :, :, :, None], (*blocks.shape[:5], t, p, p))
    return frames.reshape(gh * gw, channels * t * p * p)


def preprocess(images: ImageLike | Sequence[ImageLike],
               cfg: ImageProcessorConfig = ImageProcessorConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_values [N_patches, cfg.patch_dim] float32, grid_thw [N_images, 3] int64), equal to
    HF's `image_processor(images)["pixel_values"]` and `["image_grid_thw"]`. `images` is one
    image or a sequence of them: PIL images, HxWxC uint8 arrays (C = 1, 3 or 4), file paths."""
    if isinstance(images, (Image.Image, np.ndarray, str, os.PathLike)):
        images = [images]
    if len(images) == 0:
        raise ValueError("preprocess needs at least one image, got an empty sequence")
    table = _normalize_table(cfg)
    channel = np.arange(3)
    rows, grids = [], []
    for index, image in enumerate(images):
        rgb = load_rgb(image, index)
        height, width = rgb.shape[:2]
        try:
            new_h, new_w = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
        except ValueError as e:
            raise ValueError(f"{_describe(image, index)}: {e}") from e
        resized = np.asarray(Image.fromarray(rgb, "RGB").resize((new_w, new_h), resample=cfg.resample))
        rows.append(_patchify(table[channel, resized], cfg))
        grids.append((1, new_h // cfg.patch_size, new_w // cfg.patch_size))
    return np.concatenate(rows, axis=0), np.asarray(grids, dtype=np.int64)


# ---- text -----------------------------------------------------------------------------------------

def image_token_count(grid_thw_row: Sequence[int] | np.ndarray, merge_size: int = 2) -> int:
    """`<|image_pad|>` tokens for one image: t * h * w / merge_size**2 (HF's `replace_image_token`)."""
    row = np.asarray(grid_thw_row)
    if row.shape != (3,) or not np.issubdtype(row.dtype, np.integer) or (row <= 0).any():
        raise ValueError(f"grid_thw row must be 3 positive integers (t, h, w), got {grid_thw_row!r}")
    merge_size = _check_size("merge_size", merge_size)
    t, h, w = (int(v) for v in row)
    if h % merge_size or w % merge_size:
        raise ValueError(f"grid_thw row {(t, h, w)}: h and w must be multiples of merge_size {merge_size}")
    return t * h * w // merge_size**2


def expand_image_tokens(text: str, grid_thw: Sequence[Sequence[int]] | np.ndarray, merge_size: int = 2,
                        image_token: str = IMAGE_PAD) -> str:
    """`text` with its i-th `image_token` repeated `image_token_count(grid_thw[i])` times, as the
    HF processor expands a prompt holding one `<|image_pad|>` per image. The number of
    placeholders must equal the number of grid rows."""
    grids = np.asarray(grid_thw)
    if grids.ndim != 2 or grids.shape[1] != 3:
        raise ValueError(f"grid_thw must have shape [N_images, 3], got shape {grids.shape}")
    pieces = text.split(image_token)
    if len(pieces) - 1 != len(grids):
        raise ValueError(f"text holds {len(pieces) - 1} {image_token} placeholders but grid_thw has "
                         f"{len(grids)} images; expected one placeholder per image")
    out = [pieces[0]]
    for grid, piece in zip(grids, pieces[1:]):
        out.append(image_token * image_token_count(grid, merge_size) + piece)
    return "".join(out)


# ---- the reference agent's own downscaling ---------------------------------------------------------

def _qwen_vl_utils_size(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen_vl_utils' smart_resize (0.0.14), which differs from HF's: each rounded side is at least
    `factor` before the bounds are checked, and the downscaled sides are floored with no such
    minimum (so a very thin image can come out 0 wide)."""
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"a {height}x{width} (height x width) image has aspect ratio {ratio:.1f}; "
                         f"qwen_vl_utils allows at most {MAX_ASPECT_RATIO}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _as_pil(image: ImageLike, what: str) -> Image.Image:
    """A path (opened without EXIF transposition, as qwen_vl_utils and LLaMA-Factory open it), a
    PIL image, or an HxW / HxWxC uint8 array as a PIL image in its own mode."""
    if isinstance(image, (str, os.PathLike)):
        return _open_path(image, what, exif_transpose=False)
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"{what}: expected a uint8 array of shape HxW or HxWxC with C in (1, 3, 4), "
                             f"got {image.dtype} array of shape {image.shape}")
        return Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    raise ValueError(f"{what}: expected a PIL image, a uint8 HxWxC NumPy array or a file path, "
                     f"got {type(image).__name__}")


def fit_pixels(image: ImageLike, max_pixels: int = REFERENCE_MAX_PIXELS, *, factor: int = 32,
               min_pixels: int = 4 * 32 * 32) -> Image.Image:
    """The image as Gen-Searcher's rollout hands it to the processor: `qwen_vl_utils.fetch_image`
    with `max_pixels` (160,000) and image_patch_size 16 (so `factor` 32, and its default
    min_pixels of 4 tokens, 4 * 32**2). An RGBA image is pasted onto white with its alpha as mask;
    any other mode is `convert("RGB")`-ed (so LA or a palette's transparency is dropped, not
    composited); then sides are resized with Pillow's default filter (BICUBIC for RGB) to
    multiples of `factor` holding at most `max_pixels` pixels (qwen_vl_utils' smart_resize).

    A path is opened without EXIF transposition, as qwen_vl_utils does; an HxWxC uint8 array is
    read as L, RGB or RGBA. Returns an RGB PIL image.
    """
    max_pixels, min_pixels = _check_size("max_pixels", max_pixels), _check_size("min_pixels", min_pixels)
    factor = _check_size("factor", factor)
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")
    what = _describe(image, 0)
    pil = _as_pil(image, what)
    if pil.mode == "RGBA":
        rgb = Image.new("RGB", pil.size, (255, 255, 255))
        rgb.paste(pil, mask=pil.split()[3])
    else:
        rgb = pil.convert("RGB")
    width, height = rgb.size
    if width == 0 or height == 0:
        raise ValueError(f"{what}: image has no pixels ({width}x{height})")
    new_h, new_w = _qwen_vl_utils_size(height, width, factor, min_pixels, max_pixels)
    if new_h == 0 or new_w == 0:
        raise ValueError(f"{what}: a {height}x{width} image shrinks to {new_h}x{new_w} under "
                         f"max_pixels={max_pixels} (qwen_vl_utils' rounding; its resize would fail too)")
    return rgb.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)


# ---- the reference's SFT downscaling -----------------------------------------------------------------

# LLaMA-Factory's default image_min_pixels (its mm_plugin reads the processor attribute, 32 * 32).
LLAMAFACTORY_MIN_PIXELS = 32 * 32


def llamafactory_fit(image: ImageLike, max_pixels: int = REFERENCE_MAX_PIXELS,
                     min_pixels: int = LLAMAFACTORY_MIN_PIXELS) -> Image.Image:
    """The image as Gen-Searcher's SFT hands it to the processor: LLaMA-Factory's
    `Qwen2VLPlugin._preprocess_image` (Qwen3VLPlugin inherits it) with `image_max_pixels` 160,000
    (the reference's examples/train_full/gen_qwen3_sft.yaml) and the default image_min_pixels:
    1. a path is opened with `Image.open` (no EXIF transposition);
    2. above `max_pixels` pixels, both sides are scaled by sqrt(max_pixels / (w * h)) and truncated
       (`int`), resized with Pillow's default filter (BICUBIC; NEAREST for modes "1" and "P");
       below `min_pixels`, scaled up the same way;
    3. any mode but RGB is `convert("RGB")`-ed, after the resize (alpha is dropped, not composited);
    4. a side under 28 is raised to 28; an aspect ratio over 200 is cut to 180 (each a resize).
    The sides are not rounded to multiples of 32 as `fit_pixels` (the rollout's rule) does: the
    processor's smart_resize does that next. Returns an RGB PIL image.
    """
    max_pixels, min_pixels = _check_size("max_pixels", max_pixels), _check_size("min_pixels", min_pixels)
    what = _describe(image, 0)
    pil = _as_pil(image, what)
    if pil.width == 0 or pil.height == 0:
        raise ValueError(f"{what}: image has no pixels ({pil.width}x{pil.height})")
    def scaled_to(pixels: int) -> Image.Image:
        scale = math.sqrt(pixels / (pil.width * pil.height))
        return pil.resize((int(pil.width * scale), int(pil.height * scale)))

    if pil.width * pil.height > max_pixels:
        pil = scaled_to(max_pixels)
    if pil.width * pil.height < min_pixels:
        pil = scaled_to(min_pixels)
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    if min(pil.width, pil.height) < 28:
        pil = pil.resize((max(pil.width, 28), max(pil.height, 28)))
    if pil.width / pil.height > MAX_ASPECT_RATIO:
        pil = pil.resize((pil.height * 180, pil.height))
    if pil.height / pil.width > MAX_ASPECT_RATIO:
        pil = pil.resize((pil.width, pil.width * 180))
    return pil
