"""The one logging path for training metrics: a JSON line per step in `metrics.jsonl` (what tests
and the README's curve read), TensorBoard scalars, and a one-line summary for the console."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


class MetricsLog:
    """`enabled=False` (every process but the first of a multi-process run) writes nothing."""

    def __init__(self, workdir: Path | str, enabled: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self.path.parent.mkdir(parents=True, exist_ok=True)
        _cut_torn_tail(self.path)
        self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, phase: str, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"phase": phase, "step": step, **metrics}) + "\n")
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(f"{phase}/{name}", value, step)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()


def _cut_torn_tail(path: Path) -> None:
    """A run killed in the middle of a write leaves a last line without its newline: cut it off
    before appending, so the next record starts a line of its own. Nothing is lost: a step's record
    is written before its checkpoint, so a step whose record was torn is redone."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: cutting a torn last line (%d bytes) left by an interrupted write", path, len(data) - keep)
        with path.open("r+b") as f:
            f.truncate(keep)


def read(path: Path | str) -> list[dict]:
    """Every record of a metrics.jsonl; for a step logged twice (a resumed run redoes the steps
    after its last checkpoint), the last record wins. A line that is not a whole record (torn by a
    kill mid-write) is skipped with a warning naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    latest: dict[tuple[str, int], dict] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            latest[(rec["phase"], rec["step"])] = rec
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            log.warning("%s line %d: not a whole metrics record, skipped (%s): %.80s", path, number, e, line)
    return list(latest.values())


def line(step: int, total: int, metrics: dict[str, float], keys: dict[str, str]) -> str:
    """`step 3/30 reward 0.412 ...` with `keys` mapping metric names to short labels."""
    parts = [f"step {step}/{total}"]
    for name, label in keys.items():
        if name in metrics:
            value = metrics[name]
            parts.append(f"{label} {value:.3g}" if isinstance(value, float) else f"{label} {value}")
    return " ".join(parts)


def plot(series: dict[str, list[tuple[int, float]]], path: Path | str, title: str, size=(640, 360)) -> Path:
    """A line chart of (step, value) series as a PNG (PIL only; no plotting library needed)."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 48, 16, 28, 32
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    series = {name: [p for p in pts if math.isfinite(p[1])] for name, pts in series.items()}  # NaN: nothing to draw
    points = [p for s in series.values() for p in s]
    if not points:
        raise ValueError("plot: no points to draw")
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(0.0, min(p[1] for p in points)), max(1e-9, max(p[1] for p in points))
    x1 = x1 if x1 > x0 else x0 + 1

    def xy(step: float, value: float) -> tuple[float, float]:
        return (left + (step - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (value - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):
        value = y0 + frac * (y1 - y0)
        d.text((4, xy(x0, value)[1] - 6), f"{value:.2f}", fill="black")
    d.text((left, h - bottom + 6), str(x0), fill="black")
    d.text((w - right - 24, h - bottom + 6), str(x1), fill="black")
    d.text((left, 6), title, fill="black")
    colors = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    for i, (name, pts) in enumerate(series.items()):
        color = colors[i % len(colors)]
        if len(pts) > 1:
            d.line([xy(*p) for p in sorted(pts)], fill=color, width=2)
        for p in pts:
            cx, cy = xy(*p)
            d.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=color)
        d.text((w - right - 150, top + 6 + 14 * i), name, fill=color)
    path = Path(path)
    img.save(path)
    return path
