"""Staged evaluation on the tiny offline world: judging a results file another agent wrote (the
reference's results.json, a gsjax results.jsonl) with no agent and no generator, generating now
and judging later, failed judge calls retried on resume, and a results file's bad rows as failed
records that name the file, the row and the key."""

import json
import shutil
from pathlib import Path

import pytest

from gsjax import config as config_lib
from gsjax.eval import cli
from gsjax.eval.agents import ExpertAgent
from gsjax.rewards.generator import WorldGenerator
from gsjax.rewards.judge import WorldJudgeBackend
from gsjax.world.build import build_world

KNOWGEN = "configs/eval_knowgen.py:test"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_world(root, seed=0, n_train_entities=28, n_eval_entities=12, n_train_prompts=20, n_eval_prompts=10)
    return root


def _cfg(world, workdir, **overrides):
    return config_lib.load(KNOWGEN, workdir=str(workdir), data__world_dir=str(world), eval__report=False,
                           **overrides)


@pytest.fixture(scope="module")
def full_run(world, tmp_path_factory):
    """The expert and the no-search baseline, generated and judged in one go."""
    workdir = tmp_path_factory.mktemp("full")
    return workdir, cli.run(_cfg(world, workdir), progress=False)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _scores(path: Path) -> dict[str, dict]:
    """Each item's judged scores (its last record)."""
    return {r["id"]: r["scores"] for r in _records(path)}


@pytest.fixture
def nothing_but_the_judge(monkeypatch):
    """Fail loudly if the run builds an agent, a toolbox or a generator."""
    def refuse(what):
        def built(*args, **kwargs):
            raise AssertionError(f"a judge-only run built {what}")
        return built

    for name in ("build_agent", "_toolbox", "build_generator", "NoSearchAgent"):
        monkeypatch.setattr(cli, name, refuse(name))


class CountingJudge:
    """The world judge, counting its calls by item id; ids in `fail_once` fail their first call."""

    def __init__(self, inner, fail_once=()):
        self.inner, self.fail_once, self.calls = inner, set(fail_once), []

    def judge_image(self, sample_id, question, generated_path, gt_path):
        self.calls.append(sample_id)
        if sample_id in self.fail_once:
            self.fail_once.discard(sample_id)
            return "judge endpoint: HTTP 503 after 20 tries"
        return self.inner.judge_image(sample_id, question, generated_path, gt_path)


@pytest.fixture
def judge(monkeypatch):
    """The judge the next run builds (set `.fail_once` before the run)."""
    holder = CountingJudge(None)

    def build(cfg, world_dir):
        holder.inner = WorldJudgeBackend(world_dir)
        return holder

    monkeypatch.setattr(cli, "build_judge", build)
    return holder


def _reference_results(records: list[dict], folder: Path) -> Path:
    """`records` as the reference's results.json in `folder`: id, prompt, meta, gt_image, the image
    copied beside it under a relative output_path, success."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for r in records:
        out = f"images/{r['id']}.png"
        shutil.copy(r["generated"], folder / out)
        rows.append({"id": int(r["id"]) if r["id"].isdigit() else r["id"], "prompt": r["prompt"],
                     "meta": {"category": r["category"]}, "gt_image": r["gt_image"],
                     "gen_prompt": r["sent"]["prompt"], "output_path": out, "success": True})
    path = folder / "results.json"
    path.write_text(json.dumps(rows, indent=2))
    return path


def test_judging_another_agents_reference_results_json_gives_the_full_runs_k_score(
        world, full_run, tmp_path, nothing_but_the_judge):
    workdir, full = full_run
    results = _reference_results(_records(workdir / "expert/results.jsonl"), tmp_path / "gen_searcher_out")
    summaries = cli.run(_cfg(world, tmp_path / "w", eval__stage="judge", data__results=str(results)),
                        progress=False)
    assert list(summaries) == ["judged-gen_searcher_out"]  # no baseline
    s, ref = summaries["judged-gen_searcher_out"], full["expert"]
    assert s["failed"] == 0 and s["recorded"] == 10 and s["pending"] == 0
    assert s["k_score"] == ref["k_score"] and s["k_score_strict"] == ref["k_score_strict"]
    assert s["reference"] == ref["reference"] and s["strict"] == ref["strict"]
    judged = tmp_path / "w/judged-gen_searcher_out/results.jsonl"
    assert _scores(judged) == _scores(workdir / "expert/results.jsonl")
    assert {r["source"] for r in _records(judged)} == {f"{results}: row {i}" for i in range(10)}


def test_generate_then_judge_equals_generating_and_judging_in_one_go(world, full_run, tmp_path, judge, monkeypatch):
    workdir, full = full_run
    generated = cli.run(_cfg(world, tmp_path / "w", eval__stage="generate"), progress=False)
    assert judge.calls == []  # nothing judged yet
    for name in ("none", "expert"):
        assert generated[name]["pending"] == 10 and generated[name]["failed"] == 0
        assert {r["status"] for r in _records(tmp_path / "w" / name / "results.jsonl")} == {"generated"}
        assert json.loads((tmp_path / "w" / name / "summary.json").read_text())["pending"] == 10

    for what in ("build_agent", "_toolbox", "build_generator", "NoSearchAgent"):
        monkeypatch.setattr(cli, what, lambda *a, what=what, **k: pytest.fail(f"the judge stage built {what}"))
    judged = cli.run(_cfg(world, tmp_path / "w", eval__stage="judge"), progress=False)
    assert judged == full  # both runs' summaries, equal to the field
    assert sorted(judge.calls) == sorted(2 * [r["id"] for r in _records(workdir / "expert/results.jsonl")])
    for name in ("none", "expert"):
        assert _scores(tmp_path / "w" / name / "results.jsonl") == _scores(workdir / name / "results.jsonl")
    again = cli.run(_cfg(world, tmp_path / "w", eval__stage="judge"), progress=False)
    assert again == full and len(judge.calls) == 20  # judged once: nothing left to judge

    # the generate stage's results.jsonl as the results file of another run folder
    other = cli.run(_cfg(world, tmp_path / "w2", eval__stage="judge", run_name="from_jsonl",
                         data__results=str(tmp_path / "w/expert/results.jsonl")), progress=False)
    assert other["from_jsonl"]["k_score"] == full["expert"]["k_score"]
    assert other["from_jsonl"]["reference"] == full["expert"]["reference"]


def test_failed_judge_calls_are_judged_again_on_resume_without_rerunning_agent_or_generator(
        world, full_run, tmp_path, judge, monkeypatch):
    workdir, full = full_run
    flaky = [r["id"] for r in _records(workdir / "expert/results.jsonl")][:3]
    judge.fail_once = set(flaky)
    cfg = _cfg(world, tmp_path / "w", eval__baseline=False)
    first = cli.run(cfg, progress=False)["expert"]
    assert first["failed"] == 3 and first["failure_kinds"] == {"judge": 3}
    assert first["k_score_strict"] < full["expert"]["k_score_strict"]

    ran = {"agent": 0, "generator": 0}
    agent_run, generate = ExpertAgent.run, WorldGenerator.generate

    def counted(kind, fn):
        def call(self, *args, **kwargs):
            ran[kind] += 1
            return fn(self, *args, **kwargs)
        return call

    monkeypatch.setattr(ExpertAgent, "run", counted("agent", agent_run))
    monkeypatch.setattr(WorldGenerator, "generate", counted("generator", generate))
    judge.calls.clear()
    resumed = cli.run(cfg, progress=False)["expert"]
    assert ran == {"agent": 0, "generator": 0}
    assert sorted(judge.calls) == sorted(flaky)  # only the failed judge calls, once each
    assert resumed["failed"] == 0 and resumed["recorded"] == 10
    assert resumed == full["expert"]
    lines = _records(tmp_path / "w/expert/results.jsonl")
    assert len(lines) == 13  # append-only: the failed records stay, the retries follow
    assert [r["status"] for r in lines if r["id"] in flaky] == ["failed"] * 3 + ["scored"] * 3
    from gsjax.eval.report import write_report

    page = write_report(tmp_path / "w/expert").read_text()  # each item once, as it stands now
    assert page.count('<section class="item') == 10 and 'class="item failed"' not in page


def test_bad_rows_of_a_results_file_are_failed_records_naming_the_file_row_and_key(
        world, full_run, tmp_path, nothing_but_the_judge):
    workdir, full = full_run
    recs = _records(workdir / "expert/results.jsonl")
    results = _reference_results(recs[:4], tmp_path / "out")
    rows = json.loads(results.read_text())
    del rows[1]["output_path"]
    rows[2]["output_path"] = "images/gone.png"
    rows[3]["success"] = False
    rows += [{"id": "no-such-item", "prompt": "p", "output_path": rows[0]["output_path"]},
             {"prompt": "a row without an id", "output_path": rows[0]["output_path"]}]
    results.write_text(json.dumps(rows))
    cfg = _cfg(world, tmp_path / "w", eval__stage="judge", data__results=str(results), run_name="judged")
    s = cli.run(cfg, progress=False)["judged"]
    by_id = {r["id"]: r for r in _records(tmp_path / "w/judged/results.jsonl")}
    errors = {i: by_id[i]["error"] for i in by_id if by_id[i]["status"] == "failed"}
    assert by_id[recs[0]["id"]]["scores"] == recs[0]["scores"]
    assert errors[recs[1]["id"]] == (f"results: {results}: row 1: key 'output_path' is missing "
                                     "(expected the generated image's path)")
    assert errors[recs[2]["id"]] == f"results: {results}: row 2: key 'output_path': {tmp_path}/out/images/gone.png does not exist"
    assert errors[recs[3]["id"]].startswith(f"results: {results}: row 3: key 'success' is False")
    assert errors["no-such-item"] == (f"results: {results}: row 4: key 'id': 'no-such-item' is not an item of "
                                      f"the benchmark {world / 'knowgen_eval.json'}")
    assert errors["results-row5"] == f"results: {results}: row 5: key 'id' is missing (expected the benchmark item's id)"
    for r in recs[4:]:
        assert errors[r["id"]] == f"results: {results}: no row has id {r['id']!r}"
    assert s["items"] == s["recorded"] == 12 and s["failed"] == 11 and s["failure_kinds"] == {"results": 11}
    assert s["invalid_rows"] == 2 and s["reference"]["n_items"] == 10 and s["reference"]["n_failed"] == 9

    # the file mended: its rows are read again, the scored item is not judged again
    rows[1]["output_path"] = rows[0]["output_path"].replace(recs[0]["id"], recs[1]["id"])
    results.write_text(json.dumps(rows))
    s = cli.run(cfg, progress=False)["judged"]
    assert s["failed"] == 10 and _scores(tmp_path / "w/judged/results.jsonl")[recs[1]["id"]] == recs[1]["scores"]
    assert len(_records(tmp_path / "w/judged/results.jsonl")) == 12 + 11


def test_the_judge_stage_says_what_is_missing(world, tmp_path, nothing_but_the_judge):
    with pytest.raises(FileNotFoundError, match=r"expert/results.jsonl does not exist, so there is nothing to judge; "
                                                r"generate first \(--config.eval.stage=generate\)"):
        cli.run(_cfg(world, tmp_path / "w", eval__stage="judge"), progress=False)
    with pytest.raises(ValueError, match=r"data.results names a results file to judge: it needs "
                                         r"--config.eval.stage=judge \(eval.stage is 'all'\)"):
        cli.run(_cfg(world, tmp_path / "w", data__results=str(tmp_path / "results.json")), progress=False)
    with pytest.raises(FileNotFoundError, match=r"data.results '.*nowhere.json' does not exist"):
        cli.run(_cfg(world, tmp_path / "w", eval__stage="judge", data__results=str(tmp_path / "nowhere.json")),
                progress=False)
    (tmp_path / "list.json").write_text('{"id": 1}')
    with pytest.raises(ValueError, match=r"holds a JSON dict; expected a list of objects with id, prompt and "
                                         r"output_path"):
        cli.run(_cfg(world, tmp_path / "w", eval__stage="judge", data__results=str(tmp_path / "list.json")),
                progress=False)
    with pytest.raises(ValueError, match=r"eval.stage must be one of all, generate, judge, got 'score'"):
        cli.run(_cfg(world, tmp_path / "w", eval__stage="score"), progress=False)
