"""The attribute vocabularies of the offline world, in one place.

An entity's looks are a `Signature`: a shape filled with a primary colour, a pattern in a
secondary colour over it, and a glyph in the secondary colour on a medallion at its centre. Every
word that can describe looks (colours, shapes, patterns, glyphs) and every scene an image can be
set in is listed here and nowhere else: pages describe entities with these words, prompts name
scenes with them, the ground-truth renderer draws from them, and a world renderer reads them back
out of a generated prompt (`find_attributes`).

The vocabularies are disjoint (no word is in two of them) and no entity name, motto or page
template uses one of these words for anything else, so a word found in a prompt means one thing.
"""

from __future__ import annotations

import dataclasses
import re

# name -> RGB. Twelve colours far apart from each other (the closest pair is ~90 apart in RGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 40),
    "orange": (245, 135, 20),
    "yellow": (245, 215, 40),
    "green": (40, 155, 60),
    "teal": (20, 145, 150),
    "blue": (35, 75, 200),
    "purple": (125, 45, 165),
    "pink": (240, 120, 185),
    "brown": (120, 70, 30),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "grey": (135, 135, 135),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "hexagon", "pentagon",
                           "shield", "oval")
# Stripes run across, bars run up and down.
PATTERNS: tuple[str, ...] = ("plain", "stripes", "bars", "checks", "dots", "waves")
GLYPHS: tuple[str, ...] = ("star", "cross", "crescent", "bolt", "arrow", "heart", "wheel", "leaf")

# Scenes of a ground-truth image, with the phrase prompts use for each ("on {phrase}").
SCENES: dict[str, str] = {
    "banner": "a hanging banner",
    "poster": "a poster",
    "mug": "a mug",
    "stamp": "a postage stamp",
    "flag": "a flag",
    "shirt": "a shirt",
    "badge": "a round badge",
    "billboard": "a billboard",
    "sticker": "a sticker",
    "postcard": "a postcard",
}

VOCABULARIES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "pattern": PATTERNS,
    "glyph": GLYPHS,
    "scene": tuple(SCENES),
}
ALL_WORDS: frozenset[str] = frozenset(w for words in VOCABULARIES.values() for w in words)
assert len(ALL_WORDS) == sum(len(v) for v in VOCABULARIES.values()), "vocabularies overlap"

# Other spellings `find_attributes` reads as a vocabulary word (plurals, adjectives, US spelling).
ALIASES: dict[str, str] = {
    "gray": "grey",
    **{w + "s": w for w in SHAPES if w != "cross"},
    **{w + "s": w for w in GLYPHS if w not in ("cross", "leaf")},
    "crosses": "cross", "leaves": "leaf", "bolts": "bolt",
    **{w[:-1]: w for w in PATTERNS if w.endswith("s")},  # "stripe", "dot", ...
    "striped": "stripes", "dotted": "dots", "spotted": "dots", "wavy": "waves",
    "checked": "checks", "checkered": "checks", "chequered": "checks", "barred": "bars",
    "t-shirt": "shirt", "tshirt": "shirt", "stickers": "sticker",
}
assert not set(ALIASES) & ALL_WORDS and set(ALIASES.values()) <= ALL_WORDS


@dataclasses.dataclass(frozen=True)
class Signature:
    """What an entity looks like; the only input (with the scene and text) of its pictures."""

    shape: str
    primary: str
    secondary: str
    pattern: str
    glyph: str

    def __post_init__(self) -> None:
        for field, vocab in (("shape", SHAPES), ("primary", COLOURS), ("secondary", COLOURS),
                             ("pattern", PATTERNS), ("glyph", GLYPHS)):
            value = getattr(self, field)
            if value not in vocab:
                raise ValueError(f"Signature.{field}={value!r}: expected one of {sorted(vocab)}")
        if self.primary == self.secondary:
            raise ValueError(f"Signature: primary and secondary are both {self.primary!r}")

    def describe(self) -> str:
        """The canonical words for these looks, e.g. 'a red hexagon with blue stripes and a blue
        star in the middle'. Colours come primary first; `find_attributes` reads them back."""
        if self.pattern == "plain":
            return (f"a plain {self.primary} {self.shape} with {_a(self.secondary)} {self.glyph} "
                    f"in the middle")
        return (f"{_a(self.primary)} {self.shape} with {self.secondary} {self.pattern} and "
                f"{_a(self.secondary)} {self.glyph} in the middle")

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> "Signature":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
_OWNER = {w: k for k, words in VOCABULARIES.items() for w in words}


def find_attributes(text: str) -> dict[str, list[str]]:
    """Every vocabulary word in `text` (or an `ALIASES` spelling of one, read as the word), per
    vocabulary, in order of appearance; whole words, case-insensitive. For `Signature.describe()`
    text the colours are [primary, secondary]."""
    out: dict[str, list[str]] = {k: [] for k in VOCABULARIES}
    for token in _WORD.findall(text.lower()):
        parts = [token] if token in ALIASES or token in _OWNER else token.split("-")
        for part in parts:  # "red-striped" is "red" and "striped"; "t-shirt" is one word
            word = ALIASES.get(part, part)
            if word in _OWNER:
                out[_OWNER[word]].append(word)
    return out


def signature_from_text(text: str) -> Signature | None:
    """The signature described by `text` when it names exactly one shape, pattern and glyph and
    two colours (as `Signature.describe` writes it), else None."""
    found = find_attributes(text)
    colours = list(dict.fromkeys(found["colour"]))
    if len(colours) != 2 or len(set(found["shape"])) != 1 or len(set(found["glyph"])) != 1:
        return None
    patterns = set(found["pattern"])
    if len(patterns) != 1:
        return None
    try:
        return Signature(found["shape"][0], colours[0], colours[1], patterns.pop(),
                         found["glyph"][0])
    except ValueError:
        return None
