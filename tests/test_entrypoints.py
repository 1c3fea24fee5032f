"""The main job's embedded default, the config loader and the quickstart notebook run end to end."""

import runpy
from pathlib import Path

import pytest

from gsjax import config as config_lib
from gsjax import sample

ROOT = Path(__file__).resolve().parents[1]


def test_sample_job_runs_two_turns_on_its_default(capsys):
    cfg = config_lib.load(str(ROOT / "configs/sample.py"), max_new_tokens=20, num_samples=2)
    summary = sample.run(cfg)
    out = capsys.readouterr().out
    assert "slot 0, turn 2 after a tool observation" in out
    assert 2 <= summary["new_tokens"] <= 4 * 20
    assert summary["compilations"]["decode"] == 1  # the decode loop compiled once for both turns


def test_config_presets_and_overrides():
    cfg = config_lib.load(str(ROOT / "configs/sample.py") + ":qwen3_8b", model__path="/ckpt", cache_len=64)
    assert cfg.model.dtype == "bfloat16" and cfg.model.path == "/ckpt" and cfg.cache_len == 64
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        config_lib.load(str(ROOT / "configs/sample.py") + ":nope")
    with pytest.raises(KeyError, match="no key 'model.bogus'"):
        config_lib.load(str(ROOT / "configs/sample.py"), model__bogus=1)
    argv = ["--config=configs/sample.py:qwen3_8b", "--config.sampling.top_k=5", "--config.mesh.tp=4"]
    cfg = config_lib.from_argv(argv, "unused.py")
    assert cfg.sampling.top_k == 5 and cfg.mesh.tp == 4 and cfg.model.dtype == "bfloat16"
    with pytest.raises(KeyError, match="nearest valid keys: sampling.temperature"):
        config_lib.from_argv(["--config.sampling.temprature=1"], "configs/sample.py")
    with pytest.raises(ValueError, match="'num_samples' expects a int"):
        config_lib.from_argv(["--config.num_samples=many"], "configs/sample.py")
    with pytest.raises(ValueError, match="unknown argument '--cofig.x=1'"):
        config_lib.from_argv(["--cofig.x=1"], "configs/sample.py")
    with pytest.raises(FileNotFoundError, match="missing.py"):
        config_lib.load("configs/missing.py")


def test_quickstart_notebook_executes(capsys):
    runpy.run_path(str(ROOT / "notebooks/quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "compilations:" in out and "turn 2:" in out


def test_saved_configs_never_hold_a_planted_key(tmp_path):
    import ml_collections

    planted = "sk-test-PLANTED-999"
    cfg = ml_collections.ConfigDict({"judge": {"api_key": planted, "api_key_env": "OPENAI_API_KEY",
                                               "base_url": "http://127.0.0.1:1"}, "tools": {"search_token": planted}})
    text = config_lib.save(cfg, tmp_path / "config.json").read_text()
    assert planted not in text
    assert "OPENAI_API_KEY" in text and "http://127.0.0.1:1" in text and text.count("<redacted>") == 2
