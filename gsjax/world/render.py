"""Pictures of the offline world, drawn with PIL: pure functions of their inputs.

- `draw_subject(signature, size)`: the entity itself (RGBA, transparent around it): the shape in
  the primary colour, the pattern over it in the secondary colour, and a medallion at its centre
  holding the glyph. Drawn at 3x and reduced, so edges are smooth.
- `render_reference(signature, view, key)`: a 96x96 "photo" of the entity for the corpus: the
  subject at a slightly different size, angle and place per view, with a shadow, on a tinted
  background (every photo is a few KB, above the 1 KB image downloaders require).
- `render_scene(signatures, scene, text)`: a 128x128 ground-truth image: the scene (banner,
  mug...), one or two subjects side by side on it, and `text` on a label under them when given,
  in Pillow's built-in bitmap font. A deterministic function of exactly those three things, so a
  renderer that knows the right looks, scene and text reproduces it, and a wrong entity shows up
  as other colours and shapes.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gsjax.world.vocab import COLOURS, SCENES, Signature

REFERENCE_SIZE = 96
PHOTO_SUBJECT = 80  # photos resize one drawing of this size
SCENE_SIZE = 128
MAX_TEXT_CHARS = 20
_SS = 3  # supersampling factor of draw_subject
_INK = (30, 30, 30)
_LABEL, _LABEL_EDGE = (252, 250, 240), (170, 165, 150)  # the plate text is written on
_PNG_LEVEL = 3  # zlib level: about 2x faster than the default 6, files ~10% larger
_FONT = ImageFont.load_default_imagefont()  # Pillow's bitmap font: 6 px a character, 11 px high

Box = tuple[float, float, float, float]
Points = list[tuple[float, float]]


# ---------------------------------------------------------------------------------------------
# The subject


def _regular(n: int, start: float, cy: float) -> Points:
    return [(0.5 + 0.48 * math.cos(start + 2 * math.pi * i / n),
             cy + 0.48 * math.sin(start + 2 * math.pi * i / n)) for i in range(n)]


def _shield() -> Points:
    right = [(0.92 - 0.42 * t, 0.5 + 0.47 * math.sin(t * math.pi / 2))
             for t in (i / 10 for i in range(1, 10))]  # curved side down to the bottom point
    pts = [(0.08, 0.05), (0.92, 0.05), (0.92, 0.5), *right, (0.5, 0.97)]
    return pts + [(1 - x, y) for x, y in reversed(pts[2:-1])]


# Shapes in the unit square: a polygon, or an ellipse's box.
_POLYGONS: dict[str, Points] = {
    "square": [(0.08, 0.08), (0.92, 0.08), (0.92, 0.92), (0.08, 0.92)],
    "triangle": [(0.5, 0.03), (0.98, 0.92), (0.02, 0.92)],
    "diamond": [(0.5, 0.01), (0.99, 0.5), (0.5, 0.99), (0.01, 0.5)],
    "hexagon": _regular(6, 0.0, 0.5),
    "pentagon": _regular(5, -math.pi / 2, 0.54),
    "shield": _shield(),
}
_ELLIPSES: dict[str, Box] = {"circle": (0.03, 0.03, 0.97, 0.97), "oval": (0.02, 0.17, 0.98, 0.83)}
# Centre and radius of the medallion (fractions of the square) where the default does not fit.
_MEDALLION = {"triangle": (0.5, 0.64, 0.17), "diamond": (0.5, 0.5, 0.19), "oval": (0.5, 0.5, 0.2),
              "shield": (0.5, 0.44, 0.21), "pentagon": (0.5, 0.56, 0.21)}
_MEDALLION_DEFAULT = (0.5, 0.5, 0.23)


def _leaf() -> Points:
    upper = [(t, 0.42 * (1 - t * t)) for t in (-1 + i / 10 for i in range(21))]
    outline = upper + [(t, -w) for t, w in reversed(upper[1:-1])]
    c = 0.9 * math.cos(math.pi / 4)  # turned 45 degrees, pointing up and right
    return [(c * (x - y), -c * (x + y)) for x, y in outline]


# Glyphs drawn as one polygon, in a unit circle centred on 0.
_GLYPH_POLYGONS: dict[str, Points] = {
    "star": [((0.95 if i % 2 == 0 else 0.4) * math.cos(-math.pi / 2 + i * math.pi / 5),
              (0.95 if i % 2 == 0 else 0.4) * math.sin(-math.pi / 2 + i * math.pi / 5))
             for i in range(10)],
    "cross": [(-0.25, -0.85), (0.25, -0.85), (0.25, -0.25), (0.85, -0.25), (0.85, 0.25),
              (0.25, 0.25), (0.25, 0.85), (-0.25, 0.85), (-0.25, 0.25), (-0.85, 0.25),
              (-0.85, -0.25), (-0.25, -0.25)],
    "bolt": [(0.2, -0.95), (-0.55, 0.1), (-0.05, 0.1), (-0.25, 0.95), (0.55, -0.15), (0.05, -0.15)],
    "arrow": [(0.0, -0.9), (0.75, -0.1), (0.25, -0.1), (0.25, 0.85), (-0.25, 0.85), (-0.25, -0.1),
              (-0.75, -0.1)],
    "leaf": _leaf(),
}


def _circle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, **kw) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), **kw)


def _pattern(draw: ImageDraw.ImageDraw, pattern: str, s: int, colour: tuple[int, int, int]) -> None:
    p = s / 6
    if pattern == "stripes":
        for i in range(7):
            draw.rectangle((0, i * p, s, i * p + p / 2), fill=colour)
    elif pattern == "bars":
        for i in range(7):
            draw.rectangle((i * p, 0, i * p + p / 2, s), fill=colour)
    elif pattern == "checks":
        for i in range(6):
            for j in range(i % 2, 6, 2):
                draw.rectangle((i * p, j * p, (i + 1) * p, (j + 1) * p), fill=colour)
    elif pattern == "dots":
        q = s / 5
        for i in range(6):
            for j in range(6):
                _circle(draw, (i + 0.5 * (j % 2)) * q, (j + 0.5) * q, s / 17, fill=colour)
    elif pattern == "waves":
        xs = range(0, s + 1, max(1, s // 48))
        for i in range(7):
            y0 = i * p + p / 4
            draw.line([(x, y0 + 0.25 * p * math.sin(6 * math.pi * x / s)) for x in xs],
                      fill=colour, width=max(1, int(p / 3)))
    elif pattern != "plain":
        raise ValueError(f"unknown pattern {pattern!r}")


def _glyph(draw: ImageDraw.ImageDraw, glyph: str, cx: float, cy: float, r: float,
           ink: tuple[int, int, int], ground: tuple[int, int, int]) -> None:
    """Draw `glyph` in `ink` inside the circle (cx, cy, r) whose fill is `ground`."""
    if glyph in _GLYPH_POLYGONS:
        draw.polygon([(cx + x * r, cy + y * r) for x, y in _GLYPH_POLYGONS[glyph]], fill=ink)
        if glyph == "leaf":  # the midrib
            draw.line((cx - 0.6 * r, cy + 0.6 * r, cx + 0.55 * r, cy - 0.55 * r), fill=ground,
                      width=max(1, int(0.1 * r)))
    elif glyph == "crescent":
        _circle(draw, cx, cy, 0.85 * r, fill=ink)
        _circle(draw, cx + 0.3 * r, cy - 0.2 * r, 0.75 * r, fill=ground)
    elif glyph == "heart":
        for side in (-1, 1):
            _circle(draw, cx + side * 0.43 * r, cy - 0.28 * r, 0.42 * r, fill=ink)
        draw.polygon([(cx - 0.83 * r, cy - 0.15 * r), (cx + 0.83 * r, cy - 0.15 * r),
                      (cx, cy + 0.85 * r)], fill=ink)
    elif glyph == "wheel":
        _circle(draw, cx, cy, 0.85 * r, outline=ink, width=max(1, int(0.2 * r)))
        for a in range(4):
            dx, dy = 0.8 * r * math.cos(a * math.pi / 4), 0.8 * r * math.sin(a * math.pi / 4)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=ink, width=max(1, int(0.14 * r)))
        _circle(draw, cx, cy, 0.2 * r, fill=ink)
    else:
        raise ValueError(f"unknown glyph {glyph!r}")


def draw_subject(sig: Signature, size: int) -> Image.Image:
    """The entity drawn in a size x size RGBA square (transparent outside its shape)."""
    s = size * _SS
    primary, secondary = COLOURS[sig.primary], COLOURS[sig.secondary]
    body = Image.new("RGB", (s, s), primary)
    draw = ImageDraw.Draw(body)
    _pattern(draw, sig.pattern, s, secondary)
    mask = Image.new("L", (s, s), 0)
    edge = max(1, s // 40)
    if sig.shape in _POLYGONS:
        poly = [(x * s, y * s) for x, y in _POLYGONS[sig.shape]]
        ImageDraw.Draw(mask).polygon(poly, fill=255)
        draw.line(poly + [poly[0]], fill=_INK, width=edge * 2, joint="curve")  # half inside
    else:
        box = tuple(v * s for v in _ELLIPSES[sig.shape])
        ImageDraw.Draw(mask).ellipse(box, fill=255)
        draw.ellipse(box, outline=_INK, width=edge)
    fx, fy, fr = _MEDALLION.get(sig.shape, _MEDALLION_DEFAULT)
    cx, cy, r = fx * s, fy * s, fr * s
    _circle(draw, cx, cy, r, fill=primary, outline=secondary, width=max(1, int(0.12 * r)))
    _glyph(draw, sig.glyph, cx, cy, 0.72 * r, secondary, primary)
    body.putalpha(mask)
    return body.reduce(_SS)


# ---------------------------------------------------------------------------------------------
# Reference photos

_TINTS = ((232, 228, 220), (214, 222, 230), (226, 232, 214), (236, 222, 222), (220, 220, 220),
          (238, 232, 208))


def render_reference(sig: Signature, view: int, key: str,
                     subject: Image.Image | None = None) -> Image.Image:
    """Photo number `view` of an entity; `key` (e.g. the entity's slug) varies the framing.
    `subject` may pass `draw_subject(sig, PHOTO_SUBJECT)` to share it between views."""
    size = REFERENCE_SIZE
    rng = random.Random(f"{key}/{view}")
    tint = np.array(_TINTS[rng.randrange(len(_TINTS))], dtype=np.float32)
    ramp = np.linspace(1.04, 0.9, size, dtype=np.float32)[:, None, None]  # light from above
    base = Image.fromarray(np.broadcast_to(tint * ramp, (size, size, 3)).astype(np.uint8), "RGB")
    side = int(size * rng.uniform(0.66, 0.8))
    if subject is None:
        subject = draw_subject(sig, PHOTO_SUBJECT)
    subject = subject.resize((side, side), Image.Resampling.LANCZOS)
    subject = subject.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BICUBIC)
    x = (size - side) // 2 + rng.randint(-7, 7)
    y = (size - side) // 2 + rng.randint(-6, 6)
    shadow = Image.new("RGBA", subject.size, (0, 0, 0, 0))
    shadow.paste((0, 0, 0, 60), (0, 0), subject.getchannel("A"))
    base.paste(shadow, (x + 3, y + 3), shadow)
    base.paste(subject, (x, y), subject)
    return base


def render_references(sig: Signature, key: str, views: int) -> list[Image.Image]:
    """Photos 1..views of an entity (the subject is drawn once)."""
    subject = draw_subject(sig, PHOTO_SUBJECT)
    return [render_reference(sig, v, key, subject) for v in range(1, views + 1)]


# ---------------------------------------------------------------------------------------------
# Ground-truth scenes


def _rect_round(draw, box, r, fill, outline=None, width=1):
    draw.rounded_rectangle(box, radius=r, fill=fill, outline=outline, width=width)


def _scene_background(scene: str, draw: ImageDraw.ImageDraw) -> Box:
    """Draw the scene's object (always light where the content goes); return the rectangle the
    content goes in."""
    cream, white = (250, 242, 224), (250, 250, 248)
    S = SCENE_SIZE
    if scene == "banner":
        draw.rectangle((0, 0, S, S), fill=(222, 216, 204))
        draw.polygon([(14, 12), (114, 12), (114, 112), (64, 124), (14, 112)], fill=cream,
                     outline=_INK)
        draw.rectangle((6, 7, 122, 12), fill=(110, 70, 35))
        return (18, 16, 110, 108)
    if scene == "poster":
        draw.rectangle((0, 0, S, S), fill=(70, 76, 88))
        draw.rectangle((14, 3, 114, 125), fill=white)
        draw.rectangle((18, 7, 110, 121), outline=(180, 180, 180))
        for x, y in ((17, 6), (111, 6)):
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(200, 40, 40))
        return (20, 9, 108, 119)
    if scene == "mug":
        draw.rectangle((0, 0, S, 96), fill=(205, 214, 222))
        draw.rectangle((0, 96, S, S), fill=(168, 130, 92))
        draw.ellipse((84, 42, 124, 96), outline=white, width=8)
        _rect_round(draw, (14, 20, 100, 120), 10, white, outline=(190, 190, 190))
        draw.ellipse((14, 14, 100, 28), fill=(225, 225, 225), outline=(190, 190, 190))
        return (20, 28, 94, 114)
    if scene == "stamp":
        draw.rectangle((0, 0, S, S), fill=(214, 224, 236))
        draw.rectangle((8, 8, 120, 120), fill=white)
        for t in range(8, 121, 8):
            for x, y in ((t, 8), (t, 120), (8, t), (120, t)):
                draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=(214, 224, 236))
        draw.rectangle((16, 16, 112, 112), fill=cream, outline=(150, 120, 90))
        return (19, 19, 109, 109)
    if scene == "flag":
        draw.rectangle((0, 0, S, S), fill=(160, 200, 236))
        draw.rectangle((0, 112, S, S), fill=(90, 150, 80))
        draw.rectangle((6, 4, 11, 126), fill=(120, 120, 128))
        draw.rectangle((11, 8, 124, 96), fill=white, outline=(170, 170, 170))
        return (14, 10, 122, 94)
    if scene == "shirt":
        draw.rectangle((0, 0, S, S), fill=(186, 188, 196))
        draw.polygon([(40, 8), (52, 8), (64, 16), (76, 8), (88, 8), (124, 32), (110, 52), (98, 44),
                      (98, 124), (30, 124), (30, 44), (18, 52), (4, 32)], fill=white,
                     outline=(150, 150, 150))
        return (34, 24, 94, 120)
    if scene == "badge":
        draw.rectangle((0, 0, S, S), fill=(62, 62, 72))
        draw.ellipse((4, 4, 124, 124), fill=(205, 205, 215))
        draw.ellipse((10, 10, 118, 118), fill=cream)
        return (28, 22, 100, 106)
    if scene == "billboard":
        draw.rectangle((0, 0, S, S), fill=(170, 210, 240))
        draw.rectangle((0, 112, S, S), fill=(110, 160, 90))
        for x in (30, 94):
            draw.rectangle((x, 90, x + 5, 120), fill=(90, 90, 96))
        draw.rectangle((3, 8, 125, 94), fill=white, outline=(60, 60, 70), width=2)
        return (8, 12, 120, 90)
    if scene == "sticker":
        draw.rectangle((0, 0, S, S), fill=(172, 122, 80))
        for y in range(6, S, 14):  # wood grain
            draw.line((0, y, S, y + 3), fill=(158, 110, 70), width=2)
        _rect_round(draw, (16, 16, 122, 122), 14, (120, 84, 56))
        _rect_round(draw, (8, 8, 116, 116), 14, white, outline=(200, 200, 200))
        return (14, 14, 110, 110)
    if scene == "postcard":
        draw.rectangle((0, 0, S, S), fill=(122, 92, 70))
        draw.rectangle((4, 16, 124, 112), fill=cream, outline=(150, 130, 100))
        draw.rectangle((106, 20, 120, 36), fill=(200, 70, 60))
        return (8, 22, 104, 108)
    raise ValueError(f"unknown scene {scene!r}: expected one of {sorted(SCENES)}")


def _text_layer(text: str, max_width: float) -> Image.Image:
    """The text as an L mask, at 2x when that fits in `max_width`, else 1x."""
    w = int(_FONT.getlength(text))
    layer = Image.new("L", (w, 11), 0)
    ImageDraw.Draw(layer).text((0, 0), text, font=_FONT, fill=255)
    if 2 * w + 6 <= max_width:
        layer = layer.resize((2 * w, 22), Image.Resampling.NEAREST)
    return layer


def render_scene(signatures: Sequence[Signature], scene: str,
                 text: str | None = None) -> Image.Image:
    """The ground truth of a prompt: `scene` holding the subjects left to right, and `text` (upper
    case, at most MAX_TEXT_CHARS) on a label under them."""
    if not 1 <= len(signatures) <= 2:
        raise ValueError(f"render_scene: 1 or 2 subjects, got {len(signatures)}")
    if text is not None and not (0 < len(text) <= MAX_TEXT_CHARS and text.isascii()):
        raise ValueError(f"render_scene: text must be 1..{MAX_TEXT_CHARS} ASCII characters, "
                         f"got {text!r}")
    img = Image.new("RGB", (SCENE_SIZE, SCENE_SIZE))
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = _scene_background(scene, draw)
    if text:
        # A label as wide as the text needs (up to the whole picture), under the subjects.
        layer = _text_layer(text, x1 - x0)
        w, h = layer.width + 6, layer.height + 4
        left = min(max(1, int((x0 + x1 - w) / 2)), SCENE_SIZE - 1 - w)
        top = int(y1 - h)
        draw.rectangle((left, top, left + w - 1, top + h - 1), fill=_LABEL, outline=_LABEL_EDGE)
        img.paste(_INK, (left + 3, top + 2, left + 3 + layer.width, top + 2 + layer.height), layer)
        y1 = top - 2
    n = len(signatures)
    side = int(min(y1 - y0, (x1 - x0) / n - (4 if n > 1 else 0)))
    gap = ((x1 - x0) - n * side) / (n + 1)
    top = int(y0 + (y1 - y0 - side) / 2)
    for i, sig in enumerate(signatures):
        subject = draw_subject(sig, side)
        img.paste(subject, (int(x0 + gap + i * (side + gap)), top), subject)
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=_PNG_LEVEL)
    return buf.getvalue()


def save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(img))
