"""A results file made elsewhere, read for judging (`eval.stage="judge"` with `data.results`).

Two formats, told apart by the file's suffix:

- `.jsonl`: a gsjax run's results.jsonl. Each item's last record counts (a run appends a new record
  when it retries a judge call); its image is `generated`, as recorded (a relative path is read
  from the current folder, as the run that wrote it did); what went to the generator is
  `sent.prompt`.
- anything else: the reference's results.json, a JSON list of objects with `id`, `prompt` and
  `output_path` (the generated image; a relative path is resolved against the file's folder, as the
  reference's KnowGen judge script does), optionally `success` (false: the generation failed) and
  `gen_prompt`. Other keys (`meta`, `gt_image`, the trajectory) are not read: the category and the
  ground truth come from the benchmark, matched by id.

`read_results` turns the file into one `ResultRow` a row; a row that cannot be judged carries its
reason (naming the file, the row and the key). `match` pairs the rows with the benchmark's items.
Only a file that cannot be read at all raises.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gsjax.eval.runner import EvalItem


@dataclasses.dataclass(frozen=True)
class ResultRow:
    id: str  # "" when the row has none
    where: str  # "<file>: row 3" (a JSON list, counted from 0) or "<file>: line 4" (JSONL, from 1)
    prompt: str
    image: str = ""  # the generated image, an existing file ("" when `error`)
    gen_prompt: str = ""  # what the generator was asked ("" = not recorded)
    error: str = ""  # why the row cannot be judged ("" = judge it)


def read_results(path: Path | str) -> list[ResultRow]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.results {str(path)!r} does not exist (expected the reference's results.json "
                                "or a gsjax run's results.jsonl)")
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"data.results {str(path)!r} is not JSON ({e}); expected a list of objects with id, "
                         "prompt and output_path") from None
    if not isinstance(data, list):
        raise ValueError(f"data.results {str(path)!r} holds a JSON {type(data).__name__}; expected a list of "
                         "objects with id, prompt and output_path")
    return [_reference_row(row, f"{path}: row {i}", path.resolve().parent) for i, row in enumerate(data)]


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""


def _reference_row(row: Any, where: str, base: Path) -> ResultRow:
    if not isinstance(row, dict):
        return ResultRow("", where, "", error=f"{where}: expected an object, found a {type(row).__name__}")
    rid, prompt = _text(row, "id"), _text(row, "prompt")
    if not rid:
        return ResultRow("", where, prompt, error=f"{where}: key 'id' is missing (expected the benchmark item's id)")
    if "success" in row and not row["success"]:
        return ResultRow(rid, where, prompt, error=f"{where}: key 'success' is {row['success']!r}: the run that "
                                                   "wrote the file did not generate this image")
    out = row.get("output_path")
    if not isinstance(out, str) or not out.strip():
        what = "is missing" if out is None else f"is {out!r}"
        return ResultRow(rid, where, prompt, error=f"{where}: key 'output_path' {what} (expected the generated "
                                                   "image's path)")
    image = Path(out).expanduser()
    image = image if image.is_absolute() else base / image
    if not image.is_file():
        return ResultRow(rid, where, prompt, error=f"{where}: key 'output_path': {image} does not exist")
    return ResultRow(rid, where, prompt, str(image), _text(row, "gen_prompt"))


def _read_jsonl(path: Path) -> list[ResultRow]:
    last: dict[str, tuple[int, dict[str, Any]]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"data.results {str(path)!r}: line {n} is not JSON ({e})") from None
        if not isinstance(rec, dict) or "id" not in rec:
            raise ValueError(f"data.results {str(path)!r}: line {n} is not a gsjax result record (no 'id')")
        last[str(rec["id"])] = (n, rec)
    rows = []
    for rid, (n, rec) in last.items():
        where = f"{path}: line {n}"
        prompt = _text(rec, "prompt")
        image = rec.get("generated")
        if not image:
            rows.append(ResultRow(rid, where, prompt, error=f"{where}: key 'generated' is empty: that run did not "
                                                            f"generate this image ({rec.get('error')})"))
        elif not Path(image).is_file():
            rows.append(ResultRow(rid, where, prompt, error=f"{where}: key 'generated': {image} does not exist"))
        else:
            rows.append(ResultRow(rid, where, prompt, str(image), _text(rec.get("sent") or {}, "prompt")))
    return rows


def match(rows: Sequence[ResultRow], items: Sequence[EvalItem], results: Path | str,
          benchmark: Path | str) -> tuple[dict[str, ResultRow], list[EvalItem]]:
    """Each item's row by id ({id: row}; a row with `error` where the item cannot be judged: no row,
    two rows, another prompt), and an extra item (no category, counted as an invalid row) for each
    row that names no item of the benchmark, its row holding the reason."""
    known = {it.id: it for it in items}
    by_id: dict[str, list[ResultRow]] = {}
    extra: list[EvalItem] = []
    out: dict[str, ResultRow] = {}
    for i, row in enumerate(rows):
        if not row.id:
            extra.append(EvalItem(f"results-row{i}", row.prompt, ""))
            out[extra[-1].id] = row
        else:
            by_id.setdefault(row.id, []).append(row)
    for rid, found in by_id.items():
        row = found[0]
        if rid not in known:
            extra.append(EvalItem(rid, row.prompt, ""))
            out[rid] = row if row.error else dataclasses.replace(
                row, error=f"{row.where}: key 'id': {rid!r} is not an item of the benchmark {benchmark}")
        elif len(found) > 1:
            out[rid] = dataclasses.replace(row, error=f"{row.where}: key 'id': {rid!r} is repeated at "
                                                      + ", ".join(r.where.rsplit(': ', 1)[1] for r in found[1:]))
        elif not row.error and row.prompt and row.prompt.strip() != known[rid].prompt.strip():
            out[rid] = dataclasses.replace(row, error=f"{row.where}: key 'prompt' is not the benchmark's prompt for "
                                                      f"id {rid!r} ({benchmark})")
        else:
            out[rid] = row
    for it in items:
        if it.id not in out and not it.invalid:
            out[it.id] = ResultRow(it.id, str(results), it.prompt, error=f"{results}: no row has id {it.id!r}")
    return out, extra
