"""`pip install gsjax` on every Python that `requires-python` admits, asked of the package index as
`make test`'s own install does: every pinned dependency (the extras too) has a wheel for each admitted
version, the whole dependency tree resolves for Colab's Python (3.12), and a pin has no wheel for
the first version past the bound (the bound is what resolves, no wider). Python 3.11's full
resolution is the suite's own install."""

import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
COLAB = "3.12"


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]


def _resolves(version: str, target: Path, deps: bool) -> subprocess.CompletedProcess:
    """pip's dry run for `version`: the pins and (with `deps`) everything they need, as wheels."""
    return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--only-binary=:all:",
                           "--ignore-installed", "--python-version", version, "--target", str(target),
                           *([] if deps else ["--no-deps"]), *_requirements()],
                          capture_output=True, text=True, timeout=900)


def test_requires_python_admits_exactly_the_versions_every_pinned_dependency_has_wheels_for(tmp_path):
    spec = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    admitted = [f"3.{m}" for m in range(11, 16) if f"3.{m}" in spec]
    assert admitted[0] == "3.11" and COLAB in admitted
    past = f"3.{int(admitted[-1].split('.')[1]) + 1}"
    checks = [(COLAB, True)] + [(v, False) for v in admitted[1:] if v != COLAB] + [(past, False)]
    with ThreadPoolExecutor(len(checks)) as pool:  # mostly waiting on the index: side by side
        procs = dict(zip(checks, pool.map(lambda c: _resolves(c[0], tmp_path / f"{c[0]}-{c[1]}", c[1]), checks)))
    for (version, deps), proc in procs.items():
        if version != past:
            what = "the whole tree" if deps else "the pins"
            assert proc.returncode == 0, f"Python {version}, {what}: {proc.stderr[-1500:]}"
    beyond = procs[(past, False)]
    assert beyond.returncode != 0 and "No matching distribution" in beyond.stderr, \
        f"every pin also has wheels for Python {past}: widen requires-python"
