"""gsjax.data.images against Hugging Face's Qwen3-VL image processor (transformers 5.23).

The reference is `Qwen2VLImageProcessorPil` built locally with Qwen3-VL's preprocessor_config.json
values: the class `AutoImageProcessor` picks for a Qwen3-VL checkpoint when torchvision is not
installed (gsjax's environment; test_auto_image_processor_... pins that). Its path is Pillow plus
NumPy, so pixel_values must be equal bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

transformers = pytest.importorskip("transformers")
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_qwen2_vl  # noqa: E402

from gsjax.data.images import (  # noqa: E402
    IMAGE_PAD,
    ImageProcessorConfig,
    expand_image_tokens,
    fit_pixels,
    image_token_count,
    preprocess,
    smart_resize,
)

# Qwen/Qwen3-VL-*-Instruct's preprocessor_config.json.
QWEN3_VL_PREPROCESSOR = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
    "image_processor_type": "Qwen2VLImageProcessorFast",
}


def hf_processor(min_pixels: int = 65536, max_pixels: int = 16777216) -> hf_qwen2_vl.Qwen2VLImageProcessorPil:
    return hf_qwen2_vl.Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=16, temporal_patch_size=2, merge_size=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def hf_outputs(processor, images) -> tuple[np.ndarray, np.ndarray]:
    out = processor(images)
    return np.asarray(out["pixel_values"]), np.asarray(out["image_grid_thw"])


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def assert_same(ours: tuple[np.ndarray, np.ndarray], theirs: tuple[np.ndarray, np.ndarray]) -> None:
    assert ours[0].dtype == np.float32 and ours[1].dtype == np.int64
    assert ours[1].tolist() == theirs[1].tolist()
    assert ours[0].shape == theirs[0].shape
    assert np.array_equal(ours[0], theirs[0]), f"max |diff| {np.abs(ours[0] - theirs[0]).max()}"


# ---- pixel values ----------------------------------------------------------------------------------

def test_pixel_values_and_grids_equal_hf_for_mixed_modes_sizes_and_input_types() -> None:
    palette = Image.fromarray(noise(80, 70, 1, seed=7)[:, :, 0], "L").convert("P")
    palette.info["transparency"] = 7  # a palette colour marked transparent: HF composites it on white
    images = [
        Image.fromarray(noise(300, 200, seed=1)),                      # RGB, upscaled to >= 65536 px
        Image.fromarray(noise(257, 513, 4, seed=2), "RGBA"),           # alpha composited onto white
        Image.fromarray(noise(100, 90, 1, seed=3)[:, :, 0], "L"),
        Image.fromarray(noise(40, 2000, seed=4)),                      # very wide (ratio 50)
        Image.fromarray(noise(20, 30, seed=5)),                        # tiny: 600 px -> 224 x 320
        palette,
        Image.fromarray(noise(90, 70, 2, seed=8), "LA"),
        noise(123, 77, seed=9),                                        # NumPy RGB
        noise(50, 60, 4, seed=10),                                     # NumPy RGBA
        noise(64, 64, 1, seed=11),                                     # NumPy grey HxWx1
    ]
    ours = preprocess(images, ImageProcessorConfig())
    assert_same(ours, hf_outputs(hf_processor(), images))
    assert ours[1][4].tolist() == [1, 14, 20]
    assert ours[0].shape[1] == 3 * 2 * 16 * 16


def test_images_above_max_pixels_are_downscaled_like_hf() -> None:
    # A 600 x 500 image against a 100,000-pixel cap (the Qwen3-VL cap, 16.7 M, is too big for a unit test).
    images = [Image.fromarray(noise(600, 500, seed=12)), noise(333, 1001, seed=13)]
    cfg = ImageProcessorConfig(min_pixels=4096, max_pixels=100_000)
    ours = preprocess(images, cfg)
    assert_same(ours, hf_outputs(hf_processor(4096, 100_000), images))
    assert (ours[1][:, 1] * ours[1][:, 2] * 16 * 16 <= 100_000).all()


def test_file_paths_load_like_hf_with_exif_orientation_and_alpha_dropped(tmp_path: Path) -> None:
    rgba = tmp_path / "alpha.png"
    Image.fromarray(noise(200, 150, 4, seed=14), "RGBA").save(rgba)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(noise(120, 300, seed=15)).save(rotated, exif=exif)
    ours = preprocess([str(rgba), rotated], ImageProcessorConfig())
    assert_same(ours, hf_outputs(hf_processor(), [str(rgba), str(rotated)]))
    assert ours[1][1].tolist() == [1, 26, 12]  # 300 x 120 after the EXIF rotation (else [1, 12, 26])


def test_auto_image_processor_picks_the_pil_class_without_torchvision(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    if transformers.utils.is_torchvision_available():
        pytest.skip("torchvision is installed: AutoImageProcessor picks Qwen2VLImageProcessor (torchvision resize)")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(QWEN3_VL_PREPROCESSOR))
    auto = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert type(auto).__name__ == "Qwen2VLImageProcessorPil"
    image = Image.fromarray(noise(211, 307, seed=16))
    assert_same(preprocess(image, ImageProcessorConfig.from_hf(QWEN3_VL_PREPROCESSOR)), hf_outputs(auto, [image]))


# ---- config ------------------------------------------------------------------------------------------

def test_defaults_are_qwen3_vl_preprocessor_config() -> None:
    cfg = ImageProcessorConfig.from_hf(QWEN3_VL_PREPROCESSOR)
    assert cfg == ImageProcessorConfig()
    hf = hf_processor()
    assert (cfg.patch_size, cfg.temporal_patch_size, cfg.merge_size) == (hf.patch_size, hf.temporal_patch_size, hf.merge_size)
    assert (cfg.min_pixels, cfg.max_pixels) == (hf.size.shortest_edge, hf.size.longest_edge)
    assert cfg.image_mean == tuple(hf.image_mean) and cfg.image_std == tuple(hf.image_std)
    assert cfg.rescale_factor == hf.rescale_factor and cfg.resample == int(hf.resample)
    assert cfg.factor == 32 and cfg.patch_dim == 1536


def test_from_hf_reads_a_saved_qwen2_vl_config_like_hf(tmp_path: Path) -> None:
    # Qwen2-VL's settings (patch 14, CLIP mean/std), with top-level min/max_pixels overriding `size`.
    saved = hf_qwen2_vl.Qwen2VLImageProcessorPil()
    saved.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "preprocessor_config.json").read_text())
    raw.update(min_pixels=5000, max_pixels=120_000)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(raw))
    hf = hf_qwen2_vl.Qwen2VLImageProcessorPil.from_pretrained(tmp_path)
    cfg = ImageProcessorConfig.from_hf(raw, source=str(tmp_path / "preprocessor_config.json"))
    assert (cfg.patch_size, cfg.min_pixels, cfg.max_pixels) == (14, hf.size.shortest_edge, hf.size.longest_edge)
    assert (cfg.min_pixels, cfg.max_pixels) == (5000, 120_000)
    images = [Image.fromarray(noise(500, 400, seed=17)), Image.fromarray(noise(30, 50, seed=18))]
    assert_same(preprocess(images, cfg), hf_outputs(hf, images))


@pytest.mark.parametrize("change, message", [
    ({"patchsize": 16}, "unknown key 'patchsize'; nearest valid keys: patch_size"),
    ({"size": {"shortest_edge": 65536}}, "size must be an object with shortest_edge and longest_edge"),
    ({"do_normalize": False}, "do_normalize must be true"),
    ({"image_mean": [0.5, 0.5]}, "image_mean must be a number or a list of 3 numbers"),
    ({"merge_size": 0}, "merge_size must be a positive integer"),
    ({"resample": 9}, "resample must be a Pillow filter number"),
    ({"size": {"shortest_edge": 70000, "longest_edge": 60000}}, "min_pixels (70000) must not exceed max_pixels (60000)"),
])
def test_from_hf_errors_name_the_source_and_the_field(change: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        ImageProcessorConfig.from_hf({**QWEN3_VL_PREPROCESSOR, **change}, source="ckpt/preprocessor_config.json")
    assert str(e.value).startswith("ckpt/preprocessor_config.json: ")
    assert message in str(e.value)


# ---- smart_resize ------------------------------------------------------------------------------------

SIDES = [1, 2, 15, 16, 31, 32, 33, 47, 48, 49, 100, 255, 256, 257, 400, 1000, 1919, 4095, 4097, 9000]
BOUNDS = [(65536, 16777216), (4096, 160_000), (56 * 56, 28 * 28 * 1280)]


@pytest.mark.parametrize("factor", [28, 32])
@pytest.mark.parametrize("min_pixels, max_pixels", BOUNDS)
def test_smart_resize_equals_hf_on_a_grid_of_sizes(factor: int, min_pixels: int, max_pixels: int) -> None:
    compared = 0
    for height in SIDES:
        for width in SIDES:
            try:
                theirs = hf_qwen2_vl.smart_resize(height, width, factor, min_pixels, max_pixels)
            except ValueError:
                with pytest.raises(ValueError, match="aspect ratio"):
                    smart_resize(height, width, factor, min_pixels, max_pixels)
                continue
            assert smart_resize(height, width, factor, min_pixels, max_pixels) == theirs, (height, width)
            compared += 1
    assert compared > 300


def test_smart_resize_errors() -> None:
    assert smart_resize(10, 2000) == hf_qwen2_vl.smart_resize(10, 2000, 32, 65536, 16777216)  # ratio 200 is allowed
    with pytest.raises(ValueError, match=r"a 10x2001 \(height x width\) image has aspect ratio 200.1; .* at most 200"):
        smart_resize(10, 2001)
    with pytest.raises(ValueError, match="height must be a positive integer, got 0"):
        smart_resize(0, 10)
    with pytest.raises(ValueError, match=r"min_pixels \(100\) must not exceed max_pixels \(50\)"):
        smart_resize(10, 10, 32, 100, 50)


# ---- placeholders ------------------------------------------------------------------------------------

def test_placeholder_expansion_matches_the_hf_qwen3_vl_processor(tmp_path: Path, monkeypatch) -> None:
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.processing_utils import ProcessorMixin

    from gsjax.tokenizer import Tokenizer

    # Qwen3VLProcessor insists on a video processor, whose class needs torchvision; images only here.
    check = ProcessorMixin.check_argument_for_proper_class
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class",
                        lambda self, name, arg: None if name == "video_processor" and arg is None else check(self, name, arg))
    tok = Tokenizer.train_bpe(["a picture of the tower", "two pictures"], 300)
    tok.save(tmp_path)
    processor = Qwen3VLProcessor(image_processor=hf_processor(),
                                 tokenizer=transformers.AutoTokenizer.from_pretrained(tmp_path), video_processor=None)
    text = ("<|im_start|>user\nfirst <|vision_start|><|image_pad|><|vision_end|> then "
            "<|vision_start|><|image_pad|><|vision_end|>?<|im_end|>\n")
    images = [Image.fromarray(noise(300, 200, seed=19)), Image.fromarray(noise(700, 900, seed=20))]
    out = processor(text=[text], images=images)
    _, grid = preprocess(images)
    assert tok.encode(expand_image_tokens(text, grid)) == list(out["input_ids"][0])
    counts = [image_token_count(row) for row in grid]
    assert counts == processor._get_num_multimodal_tokens(image_sizes=[(300, 200), (700, 900)])["num_image_tokens"]
    assert counts == [70, 616]


def test_image_token_count_and_expansion_errors() -> None:
    assert image_token_count([1, 14, 20]) == 70
    assert image_token_count(np.array([1, 4, 6]), merge_size=1) == 24
    assert expand_image_tokens(f"a{IMAGE_PAD}b{IMAGE_PAD}", [[1, 2, 2], [1, 4, 2]]) == f"a{IMAGE_PAD}b{IMAGE_PAD * 2}"
    with pytest.raises(ValueError, match="text holds 1 <|image_pad|> placeholders but grid_thw has 2 images"):
        expand_image_tokens(f"a{IMAGE_PAD}", [[1, 2, 2], [1, 2, 2]])
    with pytest.raises(ValueError, match="must be multiples of merge_size 2"):
        image_token_count([1, 3, 4])
    with pytest.raises(ValueError, match=r"3 positive integers \(t, h, w\)"):
        image_token_count([1, 4])


# ---- bad inputs --------------------------------------------------------------------------------------

def test_bad_inputs_raise_value_errors_naming_the_item(tmp_path: Path) -> None:
    good = noise(64, 64)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a png")
    cases = [
        ([good, str(tmp_path / "missing.png")], f"image 1 ('{tmp_path / 'missing.png'}'): no such file"),
        ([not_an_image], f"image 0 ('{not_an_image}'): cannot be read as an image"),
        ([good, good, good.astype(np.float32)], "image 2: expected a uint8 array of shape HxW or HxWxC with C in (1, 3, 4), got float32"),
        ([np.zeros((8, 8, 2), np.uint8)], "image 0: expected a uint8 array"),
        ([good, 7], "image 1: expected a PIL image, a uint8 HxWxC NumPy array or a file path, got int"),
        ([good, noise(5, 1200)], "image 1: a 5x1200 (height x width) image has aspect ratio 240.0"),
        ([], "at least one image"),
    ]
    for images, message in cases:
        with pytest.raises(ValueError) as e:
            preprocess(images)
        assert message in str(e.value)


# ---- the reference's 160,000-pixel downscaling -------------------------------------------------------

# (height, width) -> size from qwen_vl_utils 0.0.14's smart_resize(factor=32, min_pixels=4096,
# max_pixels=160000), the call Gen-Searcher's rollout makes (rllm/parser/chat_template_parser.py).
QWEN_VL_UTILS_SIZES = {
    (300, 200): (288, 192), (1000, 700): (448, 320), (2000, 3000): (320, 480), (20, 30): (64, 96),
    (10, 1000): (32, 992), (400, 400): (384, 384), (401, 401): (384, 384), (1080, 1920): (288, 512),
    (768, 1024): (320, 448), (7, 7): (64, 64), (500, 16): (512, 32), (3000, 20): (3008, 32),
}


def test_fit_pixels_sizes_equal_qwen_vl_utils() -> None:
    for (height, width), expected in QWEN_VL_UTILS_SIZES.items():
        image = Image.new("RGB", (width, height), (10, 20, 30))
        assert fit_pixels(image).size[::-1] == expected, (height, width)


def test_fit_pixels_is_qwen_vl_utils_fetch_image() -> None:
    # fetch_image's steps on a PIL image: RGBA pasted onto white with its alpha as mask, then
    # `image.resize((w, h))` with Pillow's default filter.
    rgba = Image.fromarray(noise(1000, 700, 4, seed=21), "RGBA")
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.split()[3])
    expected = white.resize((320, 448))
    fitted = fit_pixels(rgba)
    assert fitted.mode == "RGB" and np.array_equal(np.asarray(fitted), np.asarray(expected))
    assert np.array_equal(np.asarray(fit_pixels(np.asarray(rgba))), np.asarray(expected))
    la = Image.fromarray(noise(90, 70, 2, seed=22), "LA")  # not RGBA: plain convert, alpha dropped
    assert np.array_equal(np.asarray(fit_pixels(la)), np.asarray(la.convert("RGB").resize((64, 96))))


def test_fit_pixels_then_preprocess_gives_at_most_156_tokens_per_image() -> None:
    fitted = fit_pixels(Image.fromarray(noise(1080, 1920, seed=23)))
    ours = preprocess(fitted)
    assert_same(ours, hf_outputs(hf_processor(), [fitted]))
    assert ours[1].tolist() == [[1, 18, 32]] and image_token_count(ours[1][0]) == 144 <= math.floor(160_000 / 32**2)


def test_fit_pixels_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"a 40x8000 image shrinks to 0x5632 under max_pixels=160000"):
        fit_pixels(Image.new("RGB", (8000, 40)))
    with pytest.raises(ValueError, match="no such file"):
        fit_pixels(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="aspect ratio 250.0"):
        fit_pixels(Image.new("RGB", (2500, 10)))
