"""python -m gsjax.generate: one agent run plus generation writes the image, the trajectory and the
answer; prompts the expert cannot solve are refused with examples."""

import json
from pathlib import Path

import pytest
from PIL import Image

from gsjax import config as config_lib
from gsjax import generate
from gsjax.data.formats import read_knowgen
from gsjax.world.build import build_world

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_world(root, seed=1, n_train_entities=28, n_eval_entities=12, n_train_prompts=10, n_eval_prompts=5)
    return root


def _cfg(world, **kw):
    return config_lib.load("configs/eval_knowgen.py:test", data__world_dir=str(world), **kw)


def test_generate_writes_image_trajectory_and_answer(world, tmp_path):
    item = read_knowgen(world / "knowgen_eval.json")[0]
    written = generate.generate(item.prompt, _cfg(world, workdir=str(tmp_path / "w")), tmp_path / "out")
    assert written["termination"] == "answer"
    image = Image.open(written["image"])
    assert image.size == Image.open(item.gt_image).size
    trajectory = json.loads(Path(written["trajectory"]).read_text())
    assert trajectory["prompt"] == item.prompt and trajectory["tool_calls"] >= 2
    assert any(m["role"] == "user" and m.get("images") for m in trajectory["messages"])
    answer = json.loads(Path(written["answer"]).read_text())
    assert answer["answer"]["gen_prompt"] and answer["sent"]["refs"] and answer["fallback"] is None


def test_no_search_generate_sends_the_original_prompt(world, tmp_path):
    written = generate.generate("a red lighthouse on a poster", _cfg(world, agent__backend="none",
                                workdir=str(tmp_path / "w")), tmp_path / "out")
    answer = json.loads(Path(written["answer"]).read_text())
    assert answer["answer"] is None and answer["sent"]["prompt"].startswith("a red lighthouse on a poster")
    assert answer["fallback"] and Path(written["image"]).is_file()


def test_cli_refuses_a_prompt_the_expert_cannot_solve_and_bad_arguments(world, tmp_path, capsys):
    argv = ["a cat on the moon", f"--out={tmp_path / 'o'}", f"--config=configs/eval_knowgen.py:test",
            f"--config.data.world_dir={world}", f"--config.workdir={tmp_path / 'w'}"]
    with pytest.raises(SystemExit, match="solves only the offline world's own prompts; use one of them"):
        generate.main(argv)
    with pytest.raises(SystemExit, match="usage: python -m gsjax.generate"):
        generate.main(["one", "two"])
    with pytest.raises(SystemExit, match="the prompt is empty"):
        generate.main(["  "] + argv[1:])
