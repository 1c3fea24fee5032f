"""The README's checkpoint example on a tiny random Qwen3-VL folder: `python -m gsjax.train
--config=configs/grpo.py:test --config.model.path=<a Qwen3VLForConditionalGeneration folder>`
warm-starts it with SFT on the world's expert trajectories, whose images it sees as pixels, runs
GRPO and evaluates; the policy it writes loads back in transformers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from gsjax.tokenizer import Tokenizer
from subprocess_env import worker_env

ROOT = Path(__file__).resolve().parents[1]


def _tiny_qwen3vl_folder(folder: Path) -> Tokenizer:
    tok = Tokenizer.train_bpe(["a tiny corpus of search results, pages and image titles"] * 4, vocab_size=400)
    ids = {k: tok.token_to_id(t) for k, t in (("image_token_id", "<|image_pad|>"),
                                              ("vision_start_token_id", "<|vision_start|>"),
                                              ("vision_end_token_id", "<|vision_end|>"))}
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10_000.0, "mrope_section": [4, 2, 2],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4,
                           temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=32,
                           num_position_embeddings=16, deepstack_visual_indexes=[0]),
        video_token_id=tok.vocab_size - 1, tie_word_embeddings=True, **ids)
    torch.manual_seed(0)
    Qwen3VLForConditionalGeneration(cfg).save_pretrained(folder)
    tok.save(folder)
    return tok


@pytest.mark.slow
def test_training_starts_from_a_qwen3vl_folder_and_exports_one(tmp_path):
    folder = tmp_path / "Gen-Searcher-SFT-tiny"
    _tiny_qwen3vl_folder(folder)
    workdir = tmp_path / "run"
    env = worker_env() | {"JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "gsjax.train", "--config=configs/grpo.py:test",
                           f"--config.workdir={workdir}", f"--config.model.path={folder}", "--config.sft.steps=2",
                           "--config.rl.steps=1", "--config.eval.prompts=2", "--config.agent.limits.max_pixels=1024",
                           "--config.rl.cache_len=2048", "--config.sft.row_len=2048"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["phase"] for r in records] == ["sft", "sft", "grpo"]
    assert json.loads((workdir / "summary.json").read_text())["heldout"]
    assert "images shown to the policy as pixels" in proc.stdout + proc.stderr
    # SFT keeps the tower frozen (the reference's setting) and trains the decoder; the exported
    # policy is a Qwen3-VL folder transformers loads, tensor for tensor.
    start = Qwen3VLForConditionalGeneration.from_pretrained(folder).state_dict()
    sft = Qwen3VLForConditionalGeneration.from_pretrained(workdir / "policy_sft").state_dict()
    assert sorted(sft) == sorted(start)
    assert all(torch.equal(sft[k], v) for k, v in start.items() if "visual" in k)
    assert any(not torch.allclose(sft[k], v) for k, v in start.items() if "language_model" in k)
    grpo = Qwen3VLForConditionalGeneration.from_pretrained(workdir / "policy_grpo").state_dict()
    assert sorted(grpo) == sorted(start)


def test_tiny_policy_is_a_qwen3vl_with_tiny_vision_and_text_only_without():
    from gsjax.config import load
    from gsjax.models.qwen3 import Qwen3
    from gsjax.models.qwen3_vl import Qwen3VL
    from gsjax.train import tiny_model

    tok = Tokenizer.train_bpe(["search results, pages and image titles"] * 4, vocab_size=300)
    cfg = load("configs/grpo.py:image_only")
    vl = tiny_model(cfg, tok)
    assert isinstance(vl, Qwen3VL)
    assert vl.vl_cfg.vision.out_hidden_size == vl.cfg.hidden_size == cfg.model.tiny.hidden_size
    assert sum(vl.cfg.mrope_section) == vl.cfg.head_dim // 2
    assert vl.vl_cfg.image_token_id == tok.token_to_id("<|image_pad|>")
    assert vl.vl_cfg.video_token_id >= tok.vocab_size  # no sequence holds it
    assert (vl.vl_cfg.vision.attention, vl.vl_cfg.vision.attention_block) == ("blocked", 256)  # run settings
    cfg.model.tiny_vision.enabled = False
    text = tiny_model(cfg, tok)
    assert type(text) is Qwen3 and text.cfg.num_layers == vl.cfg.num_layers and not text.cfg.mrope_section


@pytest.mark.slow
def test_image_only_preset_trains_a_tiny_vlm_that_sees_the_photos(tmp_path):
    """`configs/grpo.py:image_only` at test size: the world's looks are only in photos, the tiny
    Qwen3-VL is shown each 96x96 photo as 144 patches (36 image tokens), in SFT and in rollouts."""
    workdir = tmp_path / "run"
    env = worker_env() | {"JAX_PLATFORMS": "cpu"}
    test_size = ["--config.data.world_size.n_train_entities=40", "--config.data.world_size.n_eval_entities=12",
                 "--config.data.world_size.n_train_prompts=60", "--config.data.world_size.n_eval_prompts=4",
                 "--config.data.expert.sft_prompts=40", "--config.sft.steps=2", "--config.rl.steps=1",
                 "--config.rl.prompts_per_step=2", "--config.rl.group_size=2", "--config.rl.num_slots=4",
                 "--config.eval.prompts=4", "--config.eval.num_slots=4"]
    proc = subprocess.run([sys.executable, "-m", "gsjax.train", "--config=configs/grpo.py:image_only",
                           f"--config.workdir={workdir}", *test_size], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    m = re.search(r"SFT: (\d+) images shown to the policy as pixels \((\d+) patches\)", log)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) == 144 * int(m.group(1))
    world = json.loads((workdir / "world" / "world.json").read_text())
    assert world["image_only_share"] == 1.0
    assert not any(e["described"] for e in world["entities"] if e["split"] != "distractor")
    agent = json.loads((workdir / "policy_grpo" / "config.json").read_text())
    assert agent["architectures"] == ["Qwen3VLForConditionalGeneration"]
