"""The one logging path for training metrics: a JSON line per step in `metrics.jsonl` (what tests
and the README's curve read), TensorBoard scalars, and a one-line summary for the console."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLog:
    def __init__(self, workdir: Path | str):
        from tensorboardX import SummaryWriter

        self.path = Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, phase: str, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"phase": phase, "step": step, **metrics}) + "\n")
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(f"{phase}/{name}", value, step)
        self._tb.flush()

    def close(self) -> None:
        self._tb.close()


def read(path: Path | str) -> list[dict]:
    """Every record of a metrics.jsonl; for a step logged twice (a resumed run redoes the steps
    after its last checkpoint), the last record wins."""
    path = Path(path)
    if not path.is_file():
        return []
    latest: dict[tuple[str, int], dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            latest[(rec["phase"], rec["step"])] = rec
    return list(latest.values())


def line(step: int, total: int, metrics: dict[str, float], keys: dict[str, str]) -> str:
    """`step 3/30 reward 0.412 ...` with `keys` mapping metric names to short labels."""
    parts = [f"step {step}/{total}"]
    for name, label in keys.items():
        if name in metrics:
            value = metrics[name]
            parts.append(f"{label} {value:.3g}" if isinstance(value, float) else f"{label} {value}")
    return " ".join(parts)
