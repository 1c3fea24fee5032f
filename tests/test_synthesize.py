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
    cfg = config_lib.load("configs/eval_knowgen.py:test", data__world_dir=str(world),
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
    cfg = config_lib.load("configs/eval_knowgen.py:test", data__world_dir=str(world),
                          agent__backend="none")
    with pytest.raises(ValueError, match="teacher .* must be one of"):
        synthesize.synthesize(cfg, tmp_path, progress=False)


def _cfg(world, tmp_path, **kw):
    return config_lib.load("configs/eval_knowgen.py:test", data__world_dir=str(world),
                           workdir=str(tmp_path / "w"), **kw)


def test_an_interrupted_synthesis_resumes_without_rerunning_recorded_prompts(world, tmp_path, monkeypatch):
    from gsjax.eval.agents import ExpertAgent

    prompts = tmp_path / "prompts.json"
    write_rl_data(prompts, read_rl_data(world / "rl_data.json")[:8])
    whole = synthesize.synthesize(_cfg(world, tmp_path), tmp_path / "whole", prompts, min_reward=0.95, progress=False)

    calls: list[str] = []
    real_run = ExpertAgent.run

    def run(self, item_id, prompt):
        calls.append(item_id)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C while the fifth prompt runs
        return real_run(self, item_id, prompt)

    monkeypatch.setattr(ExpertAgent, "run", run)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        synthesize.synthesize(_cfg(world, tmp_path), out, prompts, min_reward=0.95, progress=False)
    recorded = [json.loads(x)["id"] for x in (out / "synth.jsonl").read_text().splitlines()]
    assert 3 <= len(recorded) < 8 and not (out / "sft_data.json").exists()
    calls.clear()
    again = synthesize.synthesize(_cfg(world, tmp_path), out, prompts, min_reward=0.95, progress=False)
    assert not set(calls) & set(recorded) and len(calls) == 8 - len(recorded)  # only the unrecorded ones ran
    assert again["resumed"] == len(recorded)
    ids = [json.loads(x)["id"] for x in (out / "synth.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 8
    assert {k: v for k, v in again.items() if k not in ("out", "resumed")} == \
        {k: v for k, v in whole.items() if k not in ("out", "resumed")}
    assert (out / "sft_data.json").read_text() == (tmp_path / "whole/sft_data.json").read_text()
    assert (out / "rl_data.json").read_text() == (tmp_path / "whole/rl_data.json").read_text()

    calls.clear()  # another threshold re-filters the recorded trajectories: no teacher call
    loose = synthesize.synthesize(_cfg(world, tmp_path), out, prompts, min_reward=0.0, progress=False)
    assert calls == [] and loose["sft"] == 8 - loose["failed"] and loose["rl"] == 0


def test_a_raising_teacher_is_a_failed_prompt_and_another_teacher_is_refused_in_the_same_folder(world, tmp_path,
                                                                                               monkeypatch):
    from gsjax.eval.agents import ExpertAgent

    prompts = tmp_path / "prompts.json"
    items = read_rl_data(world / "rl_data.json")[:3]
    write_rl_data(prompts, items)
    real_run = ExpertAgent.run

    def run(self, item_id, prompt):
        if item_id == str(items[1].id):
            raise RuntimeError("teacher crashed")
        return real_run(self, item_id, prompt)

    monkeypatch.setattr(ExpertAgent, "run", run)
    summary = synthesize.synthesize(_cfg(world, tmp_path), tmp_path / "out", prompts, progress=False)
    lines = {x["id"]: x for x in map(json.loads, (tmp_path / "out/synth.jsonl").read_text().splitlines())}
    assert summary["failed"] == 1 and lines[items[1].id]["reason"] == "RuntimeError: teacher crashed"
    assert lines[items[0].id]["status"] == "scored" and lines[items[0].id]["sft"]["messages"]
    with pytest.raises(ValueError, match=r"holds a run of something else .*'teacher': \('expert', 'openai'\)"):
        synthesize.synthesize(_cfg(world, tmp_path, agent__backend="openai", agent__base_url="http://127.0.0.1:9/v1"),
                              tmp_path / "out", prompts, progress=False)


def test_repeated_prompt_ids_are_refused_before_the_teacher_runs(world, tmp_path):
    item = read_rl_data(world / "rl_data.json")[0]
    prompts = tmp_path / "prompts.json"
    write_rl_data(prompts, [item, item])
    with pytest.raises(ValueError, match=rf"prompts.json: prompt ids must be unique to resume a run; repeated: \['{item.id}'\]"):
        synthesize.synthesize(_cfg(world, tmp_path), tmp_path / "out", prompts, progress=False)
    assert not (tmp_path / "out/run.json").exists()
