"""Typed readers and writers of the released Gen-Searcher data formats (reference-spec section 7).

- KnowGen-Bench (`knowgen_eval.json`): `[{"id", "prompt", "meta": {"category", "difficulty"},
  "gt_image"}]`. Categories belong to one of KnowGen's two groups (`category_group`); an unknown
  category is an error, as it is for the reference's evaluator.
- rl_data.json: `[{"id", "prompt", "gt_image"}]`.
- sft_data.json (sharegpt, as LLaMA-Factory reads it): `[{"messages": [{"role", "content"}...],
  "images": [path...]}]`, roles system / user / assistant, and exactly one `<image>` marker in
  the user turns per image.
- WISE (the paper's three files and WISE_Verified's): `[{"Prompt", "Explanation", "Category",
  "Subcategory", "prompt_id"}]`; a category must be one of WISE's six (`wise_category`).

Paths inside a file are relative to the file's folder. Readers return them resolved (absolute);
writers write a path inside the file's folder relative to it, leave other absolute paths as they
are, and take a relative path as already relative to the folder. Ids may be strings or integers
(KnowGen's are integers) and are kept as they are.

Every error is a ValueError naming the file, the row index, the field, and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

SCIENCE_AND_KNOWLEDGE = "science_and_knowledge"
POP_CULTURE_AND_NEWS = "pop_culture_and_news"
# KnowGen's category lists (lower case, as the reference evaluator compares them). The offline
# world uses the same categories (gsjax.world.entities.WORLD_CATEGORIES).
CATEGORY_GROUPS: dict[str, frozenset[str]] = {
    SCIENCE_AND_KNOWLEDGE: frozenset({
        "astronomy", "biology", "chemistry", "physics", "engineering", "medicine", "industry",
        "architecture", "history", "geography", "religion", "politics", "culture", "art",
        "sports"}),
    POP_CULTURE_AND_NEWS: frozenset({
        "anime", "game", "film", "celebrities", "posters", "multi-subject-anime",
        "multi-subject-celebrities", "multi-subject-game", "news"}),
}
# WISE's categories as they are written in its files -> the short names its scores use.
WISE_CATEGORIES: dict[str, str] = {
    "Cultural knowledge": "cultural", "time": "time", "Space": "space", "Biology": "biology",
    "Physical Knowledge": "physics", "Chemistry": "chemistry"}
KNOWN_DIFFICULTIES = ("easy", "multiple subject")  # the values seen in KnowGen; others are allowed
SFT_ROLES = ("system", "user", "assistant")
IMAGE_MARKER = "<image>"


def category_group(category: str) -> str:
    """'science_and_knowledge' or 'pop_culture_and_news' for a KnowGen (or world) category,
    compared stripped and lower-cased like the reference; ValueError when it is in neither."""
    key = category.strip().lower()
    for group, cats in CATEGORY_GROUPS.items():
        if key in cats:
            return group
    known = sorted(c for cats in CATEGORY_GROUPS.values() for c in cats)
    raise ValueError(f"category {category!r} is in neither KnowGen group; expected one of {known}")


def wise_category(category: str) -> str:
    """The short name ('cultural', 'time', 'space', 'biology', 'physics', 'chemistry') of a WISE
    category as its files write it (compared stripped and case-insensitively); ValueError when it
    is none of the six."""
    key = category.strip().lower()
    for name, short in WISE_CATEGORIES.items():
        if key in (name.lower(), short):
            return short
    raise ValueError(f"category {category!r} is not a WISE category; expected one of {list(WISE_CATEGORIES)}")


@dataclasses.dataclass(frozen=True)
class KnowGenItem:
    id: str | int
    prompt: str
    category: str
    difficulty: str
    gt_image: str  # absolute after reading

    @property
    def group(self) -> str:
        return category_group(self.category)


@dataclasses.dataclass(frozen=True)
class RLItem:
    id: str | int
    prompt: str
    gt_image: str  # absolute after reading


@dataclasses.dataclass(frozen=True)
class WiseItem:
    prompt_id: int
    prompt: str
    explanation: str
    category: str  # as written in the file
    subcategory: str

    @property
    def short_category(self) -> str:
        return wise_category(self.category)


@dataclasses.dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant
    content: str
    train: bool = True  # an assistant turn shown as context only (`"train": false` in the row)


@dataclasses.dataclass(frozen=True)
class SFTExample:
    messages: tuple[Message, ...]
    images: tuple[str, ...]  # absolute after reading; one per <image> marker in the user turns


# ---------------------------------------------------------------------------------------------
# Checking rows


class _Row:
    """Field access on one row of a file, with errors that say where."""

    def __init__(self, path: Path, index: int, row: Any):
        self.path, self.index = path, index
        if not isinstance(row, dict):
            self.fail(None, "a JSON object", row)
        self.row = row

    def fail(self, field: str | None, expected: str, got: Any = dataclasses.MISSING):
        where = f"{self.path}: row {self.index}" + (f": field {field!r}" if field else "")
        got_text = "it is missing" if got is dataclasses.MISSING else f"got {_short(got)}"
        raise ValueError(f"{where}: expected {expected}, {got_text}")

    def get(self, field: str, types: type | tuple[type, ...], expected: str,
            obj: dict | None = None, name: str | None = None) -> Any:
        obj = self.row if obj is None else obj
        name = name or field
        if field not in obj:
            self.fail(name, expected)
        value = obj[field]
        if not isinstance(value, types) or isinstance(value, bool):
            self.fail(name, expected, value)
        return value

    def text(self, field: str, obj: dict | None = None, name: str | None = None) -> str:
        value = self.get(field, str, "a non-empty string", obj, name)
        if not value.strip():
            self.fail(name or field, "a non-empty string", value)
        return value

    def item_id(self) -> str | int:
        return self.get("id", (str, int), "a string or an integer")


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    kind = type(value).__name__
    return f"{kind} {text[:60]}{'...' if len(text) > 60 else ''}"


def _load_rows(path: Path) -> list:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(doc, list):
        raise ValueError(f"{path}: expected a JSON array of rows, got {type(doc).__name__}")
    return doc


def _folder(path: Path) -> Path:
    return Path(os.path.abspath(path)).parent


def _resolve(p: str, folder: Path) -> str:
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(folder, p))


def _relative(p: str | os.PathLike, folder: Path) -> str:
    p = os.fspath(p)
    if not os.path.isabs(p):
        return p
    rel = os.path.relpath(p, folder)
    return p if rel.startswith("..") else rel


def _dump(path: Path, rows: list[dict]) -> None:
    from gsjax.fileio import atomic_write

    atomic_write(Path(path), (json.dumps(rows, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# KnowGen


def _knowgen_row(path: Path, i: int, raw: Any, folder: Path) -> KnowGenItem:
    row = _Row(path, i, raw)
    meta = row.get("meta", dict, "an object with 'category' and 'difficulty'")
    category = row.text("category", meta, "meta.category")
    try:
        category_group(category)
    except ValueError as e:
        row.fail("meta.category", f"a KnowGen category ({e})", category)
    difficulty = row.text("difficulty", meta, "meta.difficulty")
    return KnowGenItem(row.item_id(), row.text("prompt"), category, difficulty,
                       _resolve(row.text("gt_image"), folder))


def read_knowgen(path: Path | str) -> list[KnowGenItem]:
    folder = _folder(path)
    return [_knowgen_row(Path(path), i, r, folder) for i, r in enumerate(_load_rows(path))]


def read_knowgen_rows(path: Path | str) -> list[KnowGenItem | ValueError]:
    """Like `read_knowgen`, but a bad row comes back as its ValueError (naming file, row and
    field) in its place instead of ending the read: for an evaluation that records bad rows as
    item failures and goes on. A file that is not a JSON array still raises."""
    folder = _folder(path)
    out: list[KnowGenItem | ValueError] = []
    for i, raw in enumerate(_load_rows(path)):
        try:
            out.append(_knowgen_row(Path(path), i, raw, folder))
        except ValueError as e:
            out.append(e)
    return out


def write_knowgen(path: Path | str, items: list[KnowGenItem]) -> None:
    folder = _folder(path)
    rows = [{"id": it.id, "prompt": it.prompt,
             "meta": {"category": it.category, "difficulty": it.difficulty},
             "gt_image": _relative(it.gt_image, folder)} for it in items]
    for i, r in enumerate(rows):
        _knowgen_row(Path(path), i, r, folder)
    _dump(path, rows)


# ---------------------------------------------------------------------------------------------
# WISE


def _wise_row(path: Path, i: int, raw: Any) -> WiseItem:
    row = _Row(path, i, raw)
    prompt_id = row.get("prompt_id", int, "an integer")
    category = row.text("Category")
    try:
        wise_category(category)
    except ValueError as e:
        row.fail("Category", f"a WISE category ({e})", category)
    subcategory = row.get("Subcategory", str, "a string") if "Subcategory" in row.row else ""
    return WiseItem(prompt_id, row.text("Prompt"), row.text("Explanation"), category, subcategory)


def read_wise_rows(path: Path | str) -> list[WiseItem | ValueError]:
    """WISE rows, a bad row as its ValueError in its place (see `read_knowgen_rows`)."""
    out: list[WiseItem | ValueError] = []
    for i, raw in enumerate(_load_rows(path)):
        try:
            out.append(_wise_row(Path(path), i, raw))
        except ValueError as e:
            out.append(e)
    return out


def read_wise(path: Path | str) -> list[WiseItem]:
    items = read_wise_rows(path)
    for item in items:
        if isinstance(item, ValueError):
            raise item
    ids = [it.prompt_id for it in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"{path}: prompt_id must be unique; repeated: {dup}")
    return items  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# rl_data


def _rl_row(path: Path, i: int, raw: Any, folder: Path) -> RLItem:
    row = _Row(path, i, raw)
    return RLItem(row.item_id(), row.text("prompt"), _resolve(row.text("gt_image"), folder))


def read_rl_data(path: Path | str) -> list[RLItem]:
    folder = _folder(path)
    return [_rl_row(Path(path), i, r, folder) for i, r in enumerate(_load_rows(path))]


def write_rl_data(path: Path | str, items: list[RLItem]) -> None:
    folder = _folder(path)
    rows = [{"id": it.id, "prompt": it.prompt, "gt_image": _relative(it.gt_image, folder)}
            for it in items]
    for i, r in enumerate(rows):
        _rl_row(Path(path), i, r, folder)
    _dump(path, rows)


# ---------------------------------------------------------------------------------------------
# sft_data (sharegpt)


def _sft_row(path: Path, i: int, raw: Any, folder: Path) -> SFTExample:
    row = _Row(path, i, raw)
    messages_raw = row.get("messages", list, "a non-empty list of messages")
    if not messages_raw:
        row.fail("messages", "a non-empty list of messages", messages_raw)
    messages = []
    markers = 0
    for j, m in enumerate(messages_raw):
        name = f"messages[{j}]"
        if not isinstance(m, dict):
            row.fail(name, "an object with 'role' and 'content'", m)
        role = row.get("role", str, f"one of {list(SFT_ROLES)}", m, f"{name}.role")
        if role not in SFT_ROLES:
            row.fail(f"{name}.role", f"one of {list(SFT_ROLES)}", role)
        content = row.get("content", str, "a string", m, f"{name}.content")
        if role == "user":
            markers += content.count(IMAGE_MARKER)
        train = m.get("train", True)
        if not isinstance(train, bool) or (not train and role != "assistant"):
            row.fail(f"{name}.train", "true or false, and false only on an assistant message", train)
        messages.append(Message(role, content, train))
    images_raw = row.get("images", list, "a list of image paths") if "images" in row.row else []
    for j, p in enumerate(images_raw):
        if not isinstance(p, str) or not p:
            row.fail(f"images[{j}]", "a non-empty path string", p)
    if markers != len(images_raw):
        row.fail("images", f"{markers} image path(s), one per {IMAGE_MARKER} marker in the user "
                           f"turns", images_raw)
    return SFTExample(tuple(messages), tuple(_resolve(p, folder) for p in images_raw))


def read_sft_data(path: Path | str) -> list[SFTExample]:
    folder = _folder(path)
    return [_sft_row(Path(path), i, r, folder) for i, r in enumerate(_load_rows(path))]


def sft_row(example: SFTExample, folder: Path | None = None) -> dict:
    """One example as a sharegpt row; image paths inside `folder` are written relative to it."""
    images = list(example.images) if folder is None else [_relative(p, folder) for p in example.images]
    return {"messages": [{"role": m.role, "content": m.content} | ({} if m.train else {"train": False})
                         for m in example.messages], "images": images}


def parse_sft_row(path: Path | str, index: int, raw: Any) -> SFTExample:
    """A sharegpt row read from row `index` of `path` (errors name both), paths resolved beside it."""
    return _sft_row(Path(path), index, raw, _folder(path))


def write_sft_data(path: Path | str, examples: list[SFTExample]) -> None:
    folder = _folder(path)
    rows = [sft_row(ex, folder) for ex in examples]
    for i, r in enumerate(rows):
        _sft_row(Path(path), i, r, folder)
    _dump(path, rows)
