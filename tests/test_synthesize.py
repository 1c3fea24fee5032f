"""python -m gsjax.data.synthesize: the teacher's judged trajectories, filtered by reward, become
sft_data.json and the rest of the scorable prompts rl_data.json."""

import json
from pathlib import Path

import pytest

from gsjax import config as config_lib
from gsjax.data import synthesize
from gsjax.data.formats import RLItem, read_rl_data, read_sft_data, write_rl_data
from gsjax.world.build import build_world

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_world(root, seed=2, n_train_entities=28, n_eval_entities=12, n_train_prompts=12, n_eval_prompts=4)
    return root


def test_expert_teacher_writes_filtered_sft_and_rl_data(world, tmp_path):
    items = read_rl_data(world / "rl_data.json")
    prompts = tmp_path / "prompts.json"
    write_rl_data(prompts, items[:7] + [RLItem("no-gt", items[7].prompt, str(tmp_path / "missing.png"))])
    cfg = config_lib.load(str(ROOT / "configs/eval_knowgen.py") + ":test", data__world_dir=str(world),
                          workdir=str(tmp_path / "w"))
    out = tmp_path / "out"
    summary = synthesize.synthesize(cfg, out, prompts, min_reward=0.95, progress=False)
    lines = [json.loads(x) for x in (out / "synth.jsonl").read_text().splitlines()]
    assert summary["prompts"] == 8 and summary["failed"] == 1
    assert [x for x in lines if x["id"] == "no-gt"][0]["reason"].startswith("ground truth image missing")
    sft, rl = read_sft_data(out / "sft_data.json"), read_rl_data(out / "rl_data.json")
    high = [x for x in lines if x["status"] != "failed" and x["reward"] >= 0.95]
    assert len(sft) == len(high) == summary["sft"] >= 1
    assert {it.id for it in rl} == {x["id"] for x in lines if x["status"] != "failed" and x["reward"] < 0.95}
    assert not {it.id for it in rl} & {x["id"] for x in high}
    first = sft[0]
    assert [m.role for m in first.messages[:3]] == ["system", "user", "assistant"] and first.images
    assert "<answer>" in first.messages[-1].content


def test_teacher_must_be_expert_or_openai(world, tmp_path):
    cfg = config_lib.load(str(ROOT / "configs/eval_knowgen.py") + ":test", data__world_dir=str(world),
                          agent__backend="none")
    with pytest.raises(ValueError, match="teacher .* must be one of"):
        synthesize.synthesize(cfg, tmp_path, progress=False)
