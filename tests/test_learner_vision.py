"""The learner sees the pixels the sampler saw: packed rows with images score each conversation as
if alone, micro-batches and meshes change nothing, the frozen vision tower stays put, and SFT's
encoding gives each image exactly its processed grid's pad tokens and never cuts one (tiny random
Qwen3-VL, fp32, 1e-5)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from vision_fixtures import END, IMAGE, START, conversation, samples, vl_config

from gsjax.data.formats import Message, SFTExample
from gsjax.data.images import ImageProcessorConfig, fit_pixels, image_token_count, llamafactory_fit, preprocess
from gsjax.data.vision_batch import PATCHES, model_input
from gsjax.models.interface import ModelInput
from gsjax.models.losses import token_logprobs
from gsjax.models.qwen3_vl import Qwen3VL, mrope_positions, vision_input
from gsjax.rl.trainer import GRPOConfig, GRPOTrainer, Sample, pack_samples, step_statistics
from gsjax.sft.data import SFTImages, encode, pack
from gsjax.sft.trainer import SFTConfig, SFTTrainer
from gsjax.tokenizer import Tokenizer
from subprocess_env import worker_env

CFG = vl_config()
ROOT = Path(__file__).resolve().parents[1]


def _model(seed: int = 0, cfg=CFG) -> Qwen3VL:
    return Qwen3VL(cfg, rngs=nnx.Rngs(seed))


@partial(jax.jit, static_argnums=0)
def _jit_logprobs(graphdef, state, inputs: ModelInput) -> jax.Array:
    return token_logprobs(nnx.merge(graphdef, state), inputs)


def _logprobs(model, inputs: ModelInput) -> np.ndarray:
    return np.asarray(_jit_logprobs(*nnx.split(model), inputs))


def _alone(model: Qwen3VL, tokens, pixels, grids) -> np.ndarray:
    """Log-probabilities of one conversation in a batch of its own, as the sampler would see it."""
    t = np.asarray(tokens)
    positions, _ = mrope_positions(t, grids, CFG)
    inputs = ModelInput(jnp.asarray(t[None]), jnp.asarray(positions[:, None]), None,
                        vision_input(t[None], pixels, grids, CFG))
    return _logprobs(model, inputs)[0]


def _sample(tokens, mask, pixels, grids, group=0, reward=0.0) -> Sample:
    return Sample(tokens, mask, [0.0] * len(tokens), mask, group=group, reward=reward, pixel_values=pixels,
                  image_grids=grids)


def test_a_packed_row_with_images_scores_each_conversation_as_if_alone():
    rs = np.random.RandomState(0)
    a = conversation(rs, [(1, 4, 6), (1, 4, 4)])
    b = conversation(rs, [(1, 6, 4)])
    trainer = GRPOTrainer(_model(), GRPOConfig(row_len=128))
    pair = [_sample(*a, reward=1.0), _sample(*b)]
    rows, images = pack_samples(pair, step_statistics(pair, trainer.cfg), trainer.cfg)
    na, nb = len(a[0]), len(b[0])
    assert rows["segment_ids"].shape == (1, 128) and rows["segment_ids"][0, na + nb - 1] == 2
    # The row's images are its segments' images, in order.
    assert images.row.tolist() == [0, 0, 0] and images.segment.tolist() == [1, 1, 2]
    np.testing.assert_array_equal(images.pixel_values, np.concatenate([a[2], b[2]]))

    def packed(images) -> np.ndarray:
        batch = trainer.global_batch(rows, images)
        assert batch["positions"].shape == (1, 1, 128, 3)
        return _logprobs(trainer.model, model_input(jax.tree.map(lambda x: x[0], batch)))[0]

    logp = packed(images)
    model = _model()
    alone_a, alone_b = _alone(model, a[0], a[2], a[3]), _alone(model, b[0], b[2], b[3])
    np.testing.assert_allclose(logp[:na], alone_a, atol=1e-5)
    np.testing.assert_allclose(logp[na + 1:na + nb], alone_b[1:], atol=1e-5)  # b's first token: scored against a's
    # The pixels matter, and only to their own conversation: other pixels for b change b alone.
    other = dataclasses.replace(images, pixel_values=np.concatenate([a[2], -b[2]]))
    logp_other = packed(other)
    np.testing.assert_allclose(logp_other[:na], alone_a, atol=1e-5)
    assert np.abs(logp_other[na + 1:na + nb] - alone_b[1:]).max() > 1e-3


def test_b_micro_batched_step_with_images_equals_the_one_micro_batch_step():
    s = samples(0)
    cfg = GRPOConfig(row_len=96, temperature=0.9)
    whole = GRPOTrainer(_model(), cfg)
    micro = GRPOTrainer(_model(), dataclasses.replace(cfg, micro_batch_tokens=96))
    rows, images = pack_samples(s, step_statistics(s, cfg), cfg)
    assert len(rows["tokens"]) == 3 and len(images) == 12 and len(set(images.row.tolist())) == 3
    batch = micro.global_batch(rows, images)
    # 3 rows -> 4 micro-batches of one row; one bucket of patches for all of them (the largest
    # row's 96 patches -> 4 x 2**5 = 128), the fourth micro-batch all padding.
    assert batch["tokens"].shape == (4, 1, 96) and batch[PATCHES].shape == (4, 128, 96)
    assert (batch["token_index"][3] == -1).all() and (batch["vision_segment_ids"][3] == 0).all()
    assert whole.global_batch(rows, images)[PATCHES].shape == (1, 256, 96)  # all 12 images: 216 -> 256
    loss_a, grads_a = whole.loss_and_grads(rows, images=images)
    loss_b, grads_b = micro.loss_and_grads(rows, images=images)
    assert loss_b == pytest.approx(loss_a, abs=1e-5)
    flat_a, flat_b = nnx.to_flat_state(grads_a), nnx.to_flat_state(grads_b)
    for (path, ga), (_, gb) in zip(flat_a, flat_b):
        np.testing.assert_allclose(np.asarray(gb[...]), np.asarray(ga[...]), atol=1e-5, err_msg=str(path))
    # The gradient reaches the tower (the images are in the loss), and the tower trains in GRPO.
    assert max(float(np.abs(np.asarray(g[...])).max()) for p, g in flat_a if p[0] == "visual") > 1e-2
    # A step whose samples hold no image runs the text-only program: no vision fields.
    text = [dataclasses.replace(x, pixel_values=None, image_grids=None,
                                tokens=[12 if t in (START, END, IMAGE) else t for t in x.tokens]) for x in s]
    rows_t, images_t = pack_samples(text, step_statistics(text, cfg), cfg)
    assert images_t is None and set(micro.global_batch(rows_t, images_t)) == set(rows_t)


def test_c_vl_forward_and_gradients_on_an_8_device_mesh_equal_one_device():
    env = worker_env()
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "learner_vision_worker.py"), "compare"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = {tuple(r["mesh"]): r for r in map(json.loads, (x for x in proc.stdout.splitlines() if x.startswith("{")))}
    assert set(results) == {(2, 2, 2), (1, 1, 8)}
    for r in results.values():
        assert r["logits_scale"] > 0.1 and r["vision_grad_max"] > 1e-2, r  # not trivially equal
        assert r["logits_err"] <= 1e-5 and r["loss_err"] <= 1e-5 and r["grad_err"] <= 1e-5, r
    # data x fsdp = 4: micro-batches of 4 rows, the patch axis split over the 4 batch shards.
    assert results[(2, 2, 2)]["micro_batches"] == 2 and results[(2, 2, 2)]["patch_spec"] == "P(None, ('data', 'fsdp'), None)"
    assert results[(2, 2, 2)]["positions_spec"] == "P(None, ('data', 'fsdp'), None, None)"


def _worker_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if '{"' in x)
    return json.loads(line[line.index("{"):])


def test_c_two_processes_each_with_its_own_images_equal_one_process(tmp_path):
    """2 processes x 2 devices (data 2, fsdp 2; launch/gpu_hosts.sh on localhost), each packing its
    own groups and images: the GRPO step's loss and gradients equal one process with all of them."""
    import socket

    cmd = [str(ROOT / "tests" / "learner_vision_worker.py")]
    env = worker_env()
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    one = _worker_json(subprocess.run([sys.executable, *cmd, '{"data": 1}'], env=env, capture_output=True,
                                      text=True, timeout=600))
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost GSJAX_TEST_DEVICES=2\n" * 2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env.update(GSJAX_COORDINATOR_PORT=str(port), VIRTUAL_ENV=str(Path(sys.executable).parents[1]))
    two = _worker_json(subprocess.run(["bash", str(ROOT / "launch" / "gpu_hosts.sh"), str(hosts), "--", "python",
                                       *cmd, '{"data": 2, "fsdp": 2}'], env=env, capture_output=True, text=True,
                                      timeout=600))
    assert (two["processes"], two["devices"], one["images_here"], two["images_here"]) == (2, 4, 24, 12)
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-5) and abs(one["loss"]) > 0.1
    for name, ref in one["grads"].items():
        assert two["grads"][name] == pytest.approx(ref, abs=1e-4, rel=1e-5), name
    assert one["grads"]["visual/patch_embed/weight"][1] > 1.0  # the tower's gradient is in the comparison


# ------------------------------------------------------------------------------------------ SFT

PROC = ImageProcessorConfig(patch_size=4, merge_size=2, min_pixels=256, max_pixels=4096)  # the tiny tower's patches
HOOK = SFTImages(processor=PROC, max_pixels=2000)


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    """A tiny BPE, three image files and two conversations that show them."""
    root = tmp_path_factory.mktemp("sft_images")
    rs = np.random.RandomState(0)
    paths = []
    for i, (w, h) in enumerate([(60, 50), (40, 30), (24, 24)]):  # the first shrinks (3000 > 2000 pixels), the last grows (a side < 28)
        path = root / f"img{i}.png"
        Image.fromarray(rs.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(path)
        paths.append(str(path))
    text = ["Find the tower in this picture and describe it.", "The tower is tall and made of stone, near a river.",
            "Compare these two pictures of the bridge.", "Both show the old bridge; the second is at night."]
    tok = Tokenizer.train_bpe(text * 4, vocab_size=300)
    one = SFTExample((Message("user", f"{text[0]} <image>"), Message("assistant", text[1])), (paths[0],))
    two = SFTExample((Message("user", f"{text[2]} <image> and <image>"), Message("assistant", text[3])),
                     (paths[1], paths[2]))
    return tok, one, two, paths


def test_e_sft_images_get_their_grids_pad_tokens_and_the_cut_never_splits_an_image(sft_data):
    tok, _, two, paths = sft_data
    pad, start = tok.token_to_id("<|image_pad|>"), tok.token_to_id("<|vision_start|>")
    assert (pad, start) == (IMAGE, START)
    enc = encode(tok, two, max_len=10_000, images=HOOK)
    pixels, grids = preprocess([llamafactory_fit(p, 2000) for p in paths[1:]], PROC)
    np.testing.assert_array_equal(enc.image_grids, grids)
    np.testing.assert_array_equal(enc.pixel_values, pixels)
    ids = np.asarray(enc.ids)
    runs = np.split(np.flatnonzero(ids == pad), np.flatnonzero(np.diff(np.flatnonzero(ids == pad)) > 1) + 1)
    assert [len(r) for r in runs] == [image_token_count(g) for g in grids] == [20, 16]
    assert (ids[[r[0] - 1 for r in runs]] == start).all() and (ids[[r[-1] + 1 for r in runs]] == END).all()
    assert tok.decode([t for t, m in zip(enc.ids, enc.mask) if m]).startswith("<think>")  # the assistant turn

    second = runs[1][0] - 1  # the second image's <|vision_start|>
    for cut in (second + 1, second + 5, runs[1][-1] + 1):  # inside the second image: cut before it
        short = encode(tok, two, max_len=cut, images=HOOK)
        assert short.ids == enc.ids[:second] and short.image_grids.tolist() == grids[:1].tolist()
        np.testing.assert_array_equal(short.pixel_values, pixels[:int(np.prod(grids[0]))])
    kept = encode(tok, two, max_len=runs[1][-1] + 2, images=HOOK)  # up to its <|vision_end|>: kept whole
    assert kept.ids == enc.ids[:runs[1][-1] + 2] and len(kept.image_grids) == 2
    first = encode(tok, two, max_len=runs[0][3], images=HOOK)  # inside the first: no image left
    assert first.ids == enc.ids[:runs[0][0] - 1] and first.pixel_values is None and first.image_grids is None
    # Without the hook: text only, one pad token per image, as before.
    assert encode(tok, two, max_len=10_000).ids.count(pad) == 2


def test_e_llamafactory_downscale_rule():
    """LLaMA-Factory's image_max_pixels: both sides times sqrt(max / pixels), truncated; unlike the
    rollout's rule (fit_pixels: multiples of 32)."""
    image = Image.fromarray(np.zeros((400, 500, 3), np.uint8))
    assert llamafactory_fit(image).size == (447, 357)  # 500 x 400 = 200,000 > 160,000
    assert fit_pixels(image).size == (416, 352)
    assert llamafactory_fit(Image.fromarray(np.zeros((300, 400, 3), np.uint8))).size == (400, 300)  # fits
    assert llamafactory_fit(Image.fromarray(np.zeros((10, 20, 4), np.uint8))).mode == "RGB"


@pytest.mark.parametrize("train_vision", [False, True])
def test_d_sft_step_leaves_the_frozen_vision_tower_exactly_unchanged(sft_data, train_vision):
    tok, one, two, _ = sft_data
    batch = pack([encode(tok, e, max_len=256, images=HOOK) for e in (one, two)], row_len=256)
    assert len(batch.images) == 3 and batch.tokens.shape == (1, 256)
    # Three decoder layers: the second deepstack feature (added after layer 1) reaches the loss.
    trainer = SFTTrainer(_model(cfg=vl_config(num_layers=3)), SFTConfig(steps=4, lr=1e-2, warmup_frac=0.0, weight_decay=0.1,
                                             train_vision=train_vision))
    before = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(trainer.params)}
    assert np.isfinite(trainer.train_step(batch)) and np.isfinite(trainer.train_step(batch))
    after = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(trainer.params)}
    changed = {p: not np.array_equal(before[p], after[p]) for p in before}
    vision = [p for p in before if p[0] == "visual"]
    assert len(vision) > 40 and all(changed[p] for p in before if p[0] != "visual")
    trained = sum(after[p].size for p in before if train_vision or p[0] != "visual")
    if train_vision:
        assert all(changed[p] for p in vision)
    else:  # no update and no weight decay: the tower and its mergers are bit for bit what they were
        assert not any(changed[p] for p in vision)
    # Adam keeps moments (2 per value) of the trained parameters only.
    assert sum(x.size for x in jax.tree.leaves(trainer.opt_state) if x.ndim) == 2 * trained
