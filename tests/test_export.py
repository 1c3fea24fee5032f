"""`python -m gsjax.export`: any kept checkpoint step of a run as a policy folder that transformers
and gsjax load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from gsjax import config as config_lib
from gsjax.export import export, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny `gsjax.train` run keeping every checkpoint: 2 SFT steps, then 2 GRPO steps."""
    from gsjax.train import run as train

    workdir = tmp_path_factory.mktemp("export") / "run"
    cfg = config_lib.load("configs/grpo.py:test", workdir=str(workdir), sft__steps=2,
                          sft__checkpoint_every=1, sft__keep_checkpoints=3, rl__steps=2, rl__checkpoint_every=1,
                          rl__keep_checkpoints=3, eval__prompts=0, model__tiny__hidden_size=32,
                          model__tiny__intermediate_size=64, rl__cache_len=768,
                          agent__limits__max_conversation_tokens=768)
    train(cfg)
    return workdir


def _weights(folder: Path) -> dict[str, np.ndarray]:
    (file,) = folder.glob("*.safetensors")
    return load_file(str(file))


def _same(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_last_step_of_each_phase_is_the_policy_the_run_wrote(run, tmp_path):
    grpo = export(run, tmp_path / "grpo")  # default: GRPO's latest
    assert _same(_weights(grpo), _weights(run / "policy_grpo"))
    for name in ("agent.json", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (grpo / name).read_text() == (run / "policy_grpo" / name).read_text(), name
    sft = export(run, tmp_path / "sft", phase="sft")
    assert _same(_weights(sft), _weights(run / "policy_sft"))
    assert "chat_template" in json.loads((sft / "tokenizer_config.json").read_text())


def test_an_earlier_step_loads_in_transformers_with_the_logits_of_gsjax(run, tmp_path):
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForCausalLM

    from gsjax.agent.policy import load_policy
    from gsjax.models.interface import ModelInput

    first = export(run, tmp_path / "step1", phase="grpo", step=1)
    assert not _same(_weights(first), _weights(run / "policy_grpo"))  # step 2 moved the weights on
    assert not _same(_weights(first), _weights(run / "policy_sft"))  # and step 1 moved them from SFT's
    ids = np.random.RandomState(0).randint(0, 300, (1, 24))
    ours = np.asarray(load_policy(first).model(ModelInput(jnp.asarray(ids))))
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(first).eval()(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_a_step_the_run_did_not_keep_and_a_used_folder_are_refused(run, tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"ckpt_sft' holds steps \[1, 2\], not 7"):
        main(["--workdir", str(run), "--out", str(tmp_path / "x"), "--phase", "sft", "--step", "7"])
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="is not empty"):
        main(["--workdir", str(run), "--out", str(tmp_path / "used")])
    with pytest.raises(SystemExit, match="no config.json"):
        main(["--workdir", str(tmp_path), "--out", str(tmp_path / "y")])


def test_the_run_put_every_grpo_step_s_rollouts_on_record(run):
    """`workdir/rollouts/step_0001.jsonl`...: each step's G samples of each prompt, numbered as
    metrics.jsonl numbers the steps, with the step's rewards (the fields: tests/test_rollout_records.py)."""
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    grpo = {r["step"]: r for r in steps if r["phase"] == "grpo"}
    cfg = json.loads((run / "config.json").read_text())["rl"]
    assert sorted(p.name for p in (run / "rollouts").iterdir()) == ["step_0001.jsonl", "step_0002.jsonl"]
    for step, m in grpo.items():
        recs = [json.loads(line) for line in (run / "rollouts" / f"step_{step:04d}.jsonl").read_text().splitlines()]
        assert len(recs) == cfg["prompts_per_step"] * cfg["group_size"] and {r["step"] for r in recs} == {step}
        assert [r["group_index"] for r in recs] == list(range(cfg["group_size"])) * cfg["prompts_per_step"]
        assert np.mean([r["reward"] for r in recs]) == pytest.approx(m["reward"])  # no failures in the world
        assert np.mean([abs(r["advantage"]) for r in recs]) == pytest.approx(m["advantage_abs_mean"], abs=1e-6)
