"""Fresh fictional names from syllables: seeded, pronounceable, ASCII, never repeated in a world.

A name is two or three open syllables (consonant cluster + vowel), the last one optionally closed
by a coda: 'Tessel', 'Morivan', 'Dralo'. One `NameGenerator` hands out every proper word of a
world (entity names, places, people, event series), so no two things share a word; `variant`
makes a near miss of a name (one vowel changed) for distractors.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection

from gsjax.world.vocab import ALIASES, ALL_WORDS

ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "pr", "r", "s",
          "sh", "st", "t", "tr", "v", "z", "th", "c", "j")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "a", "e", "ai", "ou")  # repeats: more common
CODAS = ("", "", "", "n", "n", "r", "r", "l", "s", "th", "m", "nd", "rk", "sk")
_PLAIN_VOWELS = ("a", "e", "i", "o", "u")

# Words a fresh name must not be: English words the world's templates use, and the vocabularies.
RESERVED = ALL_WORDS | frozenset(ALIASES) | frozenset({
    "the", "and", "for", "from", "with", "photo", "image", "page", "club", "cup", "prize", "award",
    "tower", "island", "order", "party", "tour", "film", "game", "robot", "motto", "code", "bane",
    "dune", "done", "gone", "hole", "home", "lane", "line", "mine", "more", "nose", "note", "pole",
    "rose", "sale", "side", "time", "tone", "vote", "wine", "zone", "data", "coda", "sofa", "tuna",
    # English words of the world's pages, prompts and tool outputs that a name could spell: an
    # entity called 'Logo' would make 'logo' a name in the tokenizer's corpus (assets.tokenizer_corpus)
    "capital", "care", "date", "drone", "festival", "file", "games", "have", "like", "local", "logo",
    "logos", "make", "maker", "medal", "meta", "mineral", "model", "name", "names", "pages", "postage",
    "probe", "probes", "promoter", "rover", "ruler", "saga", "second", "shape", "sigil", "stage",
    "tide", "vale",
})

_WORD = re.compile(r"[A-Za-z]+")


def name_replacer(names: Collection[str], fresh: NameGenerator,
                  suffixes: Collection[str] = ()) -> Callable[[str], str]:
    """A function of a text that gives each word of it that is one of `names` (compared
    case-insensitively), or one of them with one of `suffixes` attached ('Toum' + 'ite'), a new
    word of `fresh` at each occurrence, in the original's case (Capitalised, lower or UPPER),
    keeping the suffix. Every other word stays as it is."""
    known = {n.lower() for n in names}
    tails = sorted({x.lower() for x in suffixes}, key=len, reverse=True)

    def swap(m: re.Match[str]) -> str:
        word = m.group(0)
        low = word.lower()
        tail = "" if low in known else next((t for t in tails if low.endswith(t) and low[: -len(t)] in known), None)
        if tail is None:
            return word
        new = fresh.word() + tail
        return new.upper() if word.isupper() else new.lower() if word.islower() else new

    return lambda text: _WORD.sub(swap, text)


class NameGenerator:
    """Unique pronounceable words for one world. `word()` never returns a word twice (compared
    case-insensitively), nor one passed to `reserve`."""

    def __init__(self, seed: int | str):
        self._rng = random.Random(f"names/{seed}")
        self._used: set[str] = set(RESERVED)
        self.issued: list[str] = []  # every word handed out by `word` and `variant`, in order

    def reserve(self, word: str) -> bool:
        """Mark `word` as taken; False when it already was."""
        key = word.lower()
        if key in self._used:
            return False
        self._used.add(key)
        return True

    def word(self, min_syllables: int = 2, max_syllables: int = 3) -> str:
        rng = self._rng
        while True:
            n = rng.randint(min_syllables, max_syllables)
            parts = [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(n)]
            word = "".join(parts) + rng.choice(CODAS)
            if sum(v in word for v in ("ai", "ou")) > 1:
                continue
            if 4 <= len(word) <= 10 and self.reserve(word):
                self.issued.append(word := word.capitalize())
                return word

    def person(self) -> str:
        """'First Last', both words fresh."""
        return f"{self.word(2, 2)} {self.word(2, 3)}"

    def variant(self, word: str) -> str | None:
        """A fresh near miss of `word` with one vowel changed ('Tessel' -> 'Tassel'), or None."""
        low = word.lower()
        positions = [i for i, ch in enumerate(low) if ch in _PLAIN_VOWELS  # lone vowels only
                     and (i == 0 or low[i - 1] not in _PLAIN_VOWELS)
                     and (i + 1 == len(low) or low[i + 1] not in _PLAIN_VOWELS)]
        self._rng.shuffle(positions)
        for i in positions:
            for v in self._rng.sample(_PLAIN_VOWELS, len(_PLAIN_VOWELS)):
                if v == word[i].lower():
                    continue
                candidate = (word[:i] + v + word[i + 1:]).capitalize()
                if self.reserve(candidate):
                    self.issued.append(candidate)
                    return candidate
        return None
