"""notebooks/*.ipynb run top to bottom with nbclient, each in a fresh kernel of this venv's python
(the `python3` kernel spec ipykernel installs) started in an empty folder, at their own toy sizes;
their executed outputs hold what they promise (plots, images, tables, commands). The committed
files carry no outputs."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from subprocess_env import worker_env

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("quickstart", "evaluate", "scale")
CELL_TIMEOUT_S = 600  # nbclient's limit per cell; the slowest cell (quickstart's training) takes ~50 s


def _execute(name: str, folder: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}})  # the kernel's working folder
    start = time.perf_counter()
    client.execute(env=worker_env(JAX_PLATFORMS="cpu"))  # raises CellExecutionError at the first failing cell
    print(f"{name}.ipynb executed in {time.perf_counter() - start:.1f} s")
    return nb


def _cell(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _text(cell: nbformat.NotebookNode) -> str:
    """What a cell printed and displayed as text (streams, text/plain and text/html)."""
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("display_data", "execute_result"):
            parts += [out.data.get("text/plain", ""), out.data.get("text/html", "")]
    return "\n".join(parts)


def _mimes(cell: nbformat.NotebookNode) -> list[str]:
    return [m for out in cell.outputs if out.output_type in ("display_data", "execute_result") for m in out.data]


def _installed_not_reinstalled(nb: nbformat.NotebookNode) -> None:
    """The install cell saw gsjax importable (this checkout) and installed nothing."""
    assert f"gsjax is installed: {ROOT / 'gsjax' / '__init__.py'}" in _text(_cell(nb, "install"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_carry_no_outputs_and_open_with_the_colab_install_cell(name):
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{name}.ipynb: outputs in\n{cell.source[:200]}"
    first = code[0]
    assert "install" in first.metadata.get("tags", []) and 'REPO_URL = "' in first.source
    assert 'find_spec("gsjax") is None' in first.source  # installs only where gsjax does not import


@pytest.mark.slow
def test_quickstart_shows_a_trajectory_a_reward_curve_and_the_rollout_report(tmp_path):
    nb = _execute("quickstart", tmp_path)
    _installed_not_reinstalled(nb)
    trajectory = _text(_cell(nb, "trajectory"))
    for tool in ("search", "browse", "image_search"):  # the expert's tool calls, as the notebook prints them
        assert f"tool call: {tool}(" in trajectory, trajectory[-2000:]
    assert "the episode ended with: answer" in trajectory
    images = [m for c in nb.cells if c.cell_type == "code" for m in _mimes(c)]
    assert "image/jpeg" in images  # an image the tools showed the agent
    assert "image/png" in _mimes(_cell(nb, "reward-curve"))
    report = _text(_cell(nb, "report"))
    assert "<iframe srcdoc=" in report and "step_0003" in report
    assert (tmp_path / "runs/quickstart/policy_grpo/agent.json").is_file()
    assert (tmp_path / "runs/quickstart/rollouts/step_0003.jsonl").is_file()


@pytest.mark.slow
def test_evaluate_scores_the_served_policy_and_shows_the_tables_images_and_report(tmp_path):
    nb = _execute("evaluate", tmp_path)
    _installed_not_reinstalled(nb)
    tables = _text(_cell(nb, "kscore"))
    assert "K-Score" in tables and "per category, openai-tiny" in tables, tables[-3000:]
    lines = {line.split()[0]: line for line in tables.splitlines() if line.startswith(("none ", "openai-tiny "))}
    assert set(lines) == {"none", "openai-tiny"}
    # items 2, failed 0: every episode of the served policy ran to its end (none refused by the server)
    assert lines["openai-tiny"].split()[9:11] == ["2", "0"], lines["openai-tiny"]
    assert "image/png" in _mimes(_cell(nb, "images"))
    assert "<iframe srcdoc=" in _text(_cell(nb, "report"))


@pytest.mark.slow
def test_scale_prints_the_memory_table_and_launch_commands_and_skips_the_accelerator_cell(tmp_path):
    nb = _execute("scale", tmp_path)
    _installed_not_reinstalled(nb)
    table = _text(_cell(nb, "memory-table"))
    for program in ("rollout prefill", "rollout decode", "grpo update"):
        assert program in table, table[-3000:]
    assert "resident during a GRPO step" in table
    if importlib.util.find_spec("libtpu") is not None:  # make test installs it: compiled for the TPU slice
        assert "v5p-16: 8 x TPU v5p, 95.74 GiB HBM" in table and table.rstrip().count("fits") >= 4
    launch = _text(_cell(nb, "launch"))
    assert "gcloud compute tpus tpu-vm ssh my-v5p-16 --zone us-east5-a --worker=all" in launch
    assert launch.count("# on every worker:") == 2 and "python -m gsjax.train --config=configs/grpo.py:qwen3_8b" in launch
    assert "skipped: needs a TPU or GPU; jax sees [CpuDevice(id=0)]" in _text(_cell(nb, "accelerator"))
