"""The main job's embedded default and the config loader run end to end (the notebooks: tests/test_notebooks.py)."""

import json

import pytest

from gsjax import config as config_lib
from gsjax import sample


def test_sample_job_runs_two_turns_on_its_default(capsys):
    cfg = config_lib.load("configs/sample.py", max_new_tokens=20, num_samples=2)
    summary = sample.run(cfg)
    out = capsys.readouterr().out
    assert "slot 0, turn 2 after a tool observation" in out
    assert 2 <= summary["new_tokens"] <= 4 * 20
    assert summary["compilations"]["decode"] == 1  # the decode loop compiled once for both turns


def test_config_presets_and_overrides():
    cfg = config_lib.load("configs/sample.py:qwen3_8b", model__path="/ckpt", cache_len=64)
    assert cfg.model.dtype == "bfloat16" and cfg.model.path == "/ckpt" and cfg.cache_len == 64
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        config_lib.load("configs/sample.py:nope")
    with pytest.raises(KeyError, match="no key 'model.bogus'"):
        config_lib.load("configs/sample.py", model__bogus=1)
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


def test_saved_configs_never_hold_a_planted_key(tmp_path):
    import ml_collections

    planted = "sk-test-PLANTED-999"
    cfg = ml_collections.ConfigDict({"judge": {"api_key": planted, "api_key_env": "OPENAI_API_KEY",
                                               "base_url": "http://127.0.0.1:1"}, "tools": {"search_token": planted}})
    text = config_lib.save(cfg, tmp_path / "config.json").read_text()
    assert planted not in text
    assert "OPENAI_API_KEY" in text and "http://127.0.0.1:1" in text and text.count("<redacted>") == 2


def _run_outside(tmp_path, *args: str, timeout: int = 300):
    """`python -m ...` started in an empty folder outside the checkout, as a new user would."""
    import subprocess
    import sys

    from subprocess_env import worker_env

    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=worker_env(JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=timeout)


def test_entry_points_answer_help_and_find_their_configs_from_any_folder(tmp_path):
    """`--help` says what the command does, its config's presets, every key with its default and an
    example; the shipped configs resolve from an empty folder. (`python -m gsjax.train
    --config=configs/grpo.py:test` from outside the checkout: tests/test_multihost.py's fixture.)"""
    train = _run_outside(tmp_path, "gsjax.train", "--help")
    assert train.returncode == 0, train.stderr[-2000:]
    assert "SFT then agentic GRPO" in train.stdout and "python -m gsjax.train --config=configs/grpo.py" in train.stdout
    assert "presets: default, test, image_only, copy_heads, cpu_long, qwen3_8b, qwen3vl_8b" in train.stdout
    assert "\n  --config.rl.group_size=" in train.stdout and "\n  --config.workdir=runs/grpo\n" in train.stdout
    preset = _run_outside(tmp_path, "gsjax.train", "--config=configs/grpo.py:test", "-h")
    assert preset.returncode == 0 and "\n  --config.workdir=runs/grpo_test\n" in preset.stdout  # that preset's keys
    evaluate = _run_outside(tmp_path, "gsjax.eval", "--help")
    assert evaluate.returncode == 0 and "presets: default, test, image_only, openai" in evaluate.stdout
    assert "\n  --config.agent.backend=expert\n" in evaluate.stdout
    gen_help = _run_outside(tmp_path, "gsjax.generate", "--help")
    assert gen_help.returncode == 0 and "usage: python -m gsjax.generate" in gen_help.stdout
    prompt = "Design a billboard that features the emblem of the Thabraler Athletic."
    gen = _run_outside(tmp_path, "gsjax.generate", prompt)
    assert gen.returncode == 0, gen.stderr[-2000:]
    out = tmp_path / "elsewhere" / "runs" / "generate" / "design-a-billboard-that-features-the-emblem-of-t"
    assert (out / "image.png").is_file() and json.loads((out / "answer.json").read_text())["answer"]["gen_prompt"]
    missing = _run_outside(tmp_path, "gsjax.train", "--config=configs/nope.py")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "shipped with gsjax: configs/eval_knowgen.py" in missing.stderr
