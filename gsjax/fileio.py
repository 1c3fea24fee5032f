"""Small file helpers shared across the package."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename, so a reader never sees half a
    file and a crash leaves the old one (the folder is created when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_text_file(path: str | Path, key: str) -> str:
    """The whole of the UTF-8 file at `path`, named by the config key `key` in every error."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{key}: {str(p)!r} is not a file (expected a UTF-8 text file, or \"\" for "
                                "gsjax's own text)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{key}: {str(p)!r} is not UTF-8 text: {e}") from None
    if not text.strip():
        raise ValueError(f"{key}: {str(p)!r} is empty (give the text, or \"\" for gsjax's own)")
    return text


def text_or_default(path: str, key: str) -> str:
    """A config entry's text: the file's, or "" (gsjax's own) when no file is named."""
    return read_text_file(path, key) if path else ""


def read_jsonl(path: Path | str, what: str = "JSON", advice: str = "") -> list[Any]:
    """The records of a JSON-lines file (blank lines skipped); a line that is not JSON is a
    ValueError naming the file, the line and `what` it should have been."""
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n} is not {what} ({e}){advice}") from None
    return out


class ResultsLog:
    """An append-only JSONL file of finished work, one record a line, safe to append from many
    threads; each line is flushed and fsynced as it is written, and a line torn by a crash is
    dropped when the log is opened again (what finished before it is kept)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):  # a line torn by a crash: drop it
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return read_jsonl(self.path, "JSON", "; move the file away to start over")

    def recorded_ids(self, ids: Sequence[str], what: str) -> set[str]:
        """Which of `ids` (the work to do, unique, or a ValueError naming `what` and the repeats)
        the log already holds."""
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"{what} ids must be unique to resume a run; repeated: {dup}")
        return set(ids) & set(self.by_id())

    def by_id(self) -> dict[str, tuple[int, dict[str, Any]]]:
        """Each id's first record (its "id" as a string), with the record's position in the log."""
        out: dict[str, tuple[int, dict[str, Any]]] = {}
        for n, r in enumerate(self.records()):
            out.setdefault(str(r["id"]), (n, r))
        return out

    def latest_by_id(self) -> dict[str, dict[str, Any]]:
        """Each id's last record: where a run appends a new record for work it redid (an evaluation
        retrying a failed judge call), the one that holds now."""
        return {str(r["id"]): r for r in self.records()}

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._lock, open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def pin_run(folder: Path, fingerprint: dict[str, Any], elsewhere: str = "another folder") -> None:
    """Record what a resumable run in `folder` computes (`run.json`), or, when the folder already
    holds a run, refuse one of something else instead of mixing their results (`elsewhere` says how
    to choose another folder)."""
    file = folder / "run.json"
    if file.is_file():
        before = json.loads(file.read_text())
        if before != fingerprint:
            diff = {k: (before.get(k), fingerprint.get(k)) for k in sorted(set(before) | set(fingerprint))
                    if before.get(k) != fingerprint.get(k)}
            raise ValueError(f"{folder} holds a run of something else ({diff}, recorded vs now); "
                             f"choose {elsewhere}, or delete the folder to start over")
    else:
        atomic_write(file, (json.dumps(fingerprint, indent=2, sort_keys=True) + "\n").encode())


class BackgroundServer:
    """Runs `self._http` (a socketserver / http.server instance) in a daemon thread:
    `start()`, `stop()`, and use as a context manager. Subclasses set `_http` and `port`."""

    _http: "object"
    port: int
    _thread = None

    def start(self):
        import threading

        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self).__name__}-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._http.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
