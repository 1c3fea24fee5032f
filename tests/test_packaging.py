"""`pip install gsjax` on every Python that `requires-python` admits: each pinned dependency (the
extras too) resolves to wheels for it, and the first version past the bound does not (the bound is
what resolves, no wider). Asks the package index, as `make test`'s own install does."""

import subprocess
from concurrent.futures import ThreadPoolExecutor
import sys
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]


def _resolves(version: str, target: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--only-binary=:all:",
                           "--ignore-installed", "--python-version", version, "--target", str(target),
                           *_requirements()], capture_output=True, text=True, timeout=900)


def test_requires_python_admits_exactly_the_versions_every_pinned_dependency_has_wheels_for(tmp_path):
    spec = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    admitted = [f"3.{m}" for m in range(11, 16) if f"3.{m}" in spec]
    assert admitted[0] == "3.11" and "3.12" in admitted  # Colab's Python (3.12) installs it
    past = f"3.{int(admitted[-1].split('.')[1]) + 1}"
    with ThreadPoolExecutor(len(admitted) + 1) as pool:  # mostly waiting on the index: side by side
        procs = dict(zip([*admitted, past], pool.map(lambda v: _resolves(v, tmp_path / v), [*admitted, past])))
    for version in admitted:
        assert procs[version].returncode == 0, f"Python {version}: {procs[version].stderr[-1500:]}"
    beyond = procs[past]
    assert beyond.returncode != 0 and "No matching distribution" in beyond.stderr, \
        f"every pin also resolves for Python {past}: widen requires-python"
