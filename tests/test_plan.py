"""`python -m gsjax.plan`: compiled ahead of time for a Cloud TPU v5p-8 (libtpu, no TPU), a
mid-size model's programs fit, shard their KV cache and never hold [batch, length, vocab] logits;
a config that cannot fit is refused with exit status 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Qwen3-like, 0.2 B parameters: the 8B preset's settings (scan, remat, splash, vocab chunks,
# token-budget micro-batches, fsdp x tp) at a size that compiles in a minute on 2 cores.
MID = ["--config=configs/grpo.py:qwen3_8b", "--config.model.architecture=", "--config.model.tiny.vocab_size=32768",
       "--config.model.tiny.hidden_size=1024", "--config.model.tiny.intermediate_size=3072",
       "--config.model.tiny.num_layers=4", "--config.model.tiny.num_heads=8", "--config.model.tiny.num_kv_heads=4",
       "--config.model.tiny.head_dim=128", "--config.model.tiny.tie_embeddings=false", "--config.rl.cache_len=8192",
       "--config.rl.num_slots=8", "--config.rl.micro_batch_tokens=8192", "--config.model.cache_block=2048"]


def _plan(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    if not any(a.startswith("--topology=cpu:") for a in args):
        pytest.importorskip("libtpu", reason="compiling for TPU topologies needs the tpu extra (make test installs it)")
    out = tmp_path / "plan.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "gsjax.plan", *args, f"--json={out}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    return proc, (json.loads(out.read_text()) if out.is_file() else {})


@pytest.mark.slow
def test_a_mid_size_config_fits_a_v5p_8_with_a_sharded_cache_and_no_vocab_sized_logits(tmp_path):
    # Memory only: the FLOPs' extra compiles (1 and 2 unrolled layers per program) took half of this
    # test's 6 minutes; test_flops_count_every_layer_of_a_scanned_model checks them at toy size.
    proc, doc = _plan(tmp_path, "--topology=v5p-8", *MID, "--no-flops")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    programs = {p["name"]: p for p in doc["programs"]}
    assert set(programs) == {"rollout prefill", "rollout decode", "grpo update"}
    assert doc["fits"] and "fits" in proc.stdout and "DOES NOT FIT" not in proc.stdout
    for p in programs.values():
        assert 0 < p["total"] <= doc["hbm_bytes"]

    # The KV cache: 4 layers x 8 slots x 8192 x 4 kv heads x 128 x bf16, keys and values, split over
    # the 4 chips (slots over fsdp, kv heads over tp), not replicated on each.
    cache = 2 * 4 * 8 * 8192 * 4 * 128 * 2
    decode = programs["rollout decode"]
    assert decode["roles"]["KV cache"] == cache // 4
    assert "fsdp" in decode["shardings"]["KV cache"] and "tp" in decode["shardings"]["KV cache"]

    # The update's temporaries stay far below the fp32 logits of one micro-batch's rows on a chip
    # ([1 row, 8192 tokens, 32768 vocab] x 4 bytes = 1 GiB): log-probabilities go in vocabulary chunks.
    update = programs["grpo update"]
    assert "32 micro-batches x 2 rows x 8192 tokens" in update["note"]
    assert update["temp"] < 8192 * 32768 * 4
    assert "resident during a GRPO step" in proc.stdout
    # The sampler's weights and cache are freed during the update: a step holds its larger phase.
    rollout, updating = doc["resident"]["rollout"], doc["resident"]["update"]
    assert rollout["KV cache"] == cache // 4 and "KV cache" not in updating and "sampler weights" not in updating
    assert updating["temporaries and batch"] == update["temp"] + update["roles"]["batch"]


def test_flops_count_every_layer_of_a_scanned_model(monkeypatch):
    """XLA's cost analysis counts a scanned loop's body once; the planner's FLOPs of a scanned
    4-layer GRPO update (extrapolated from the update built with 1 and 2 unrolled layers) are the
    count of the same update with its 4 layers unrolled, where XLA sees every layer."""
    import jax

    from gsjax.configs.grpo import get_config
    from gsjax import plan
    from gsjax.parallel import make_mesh

    cfg = get_config("test")
    cfg.model.scan_layers, cfg.model.tiny.num_layers = True, 4
    model_cfg, mesh = plan.model_config(cfg), make_mesh({"data": 1}, jax.devices()[:1])
    assert plan.decoder(model_cfg).scan_layers
    lowered = {}
    measure = plan.measure
    def keep(name, program, *args, **kwargs):
        lowered[name] = program
        return measure(name, program, *args, **kwargs)

    monkeypatch.setattr(plan, "measure", keep)
    extrapolated = plan.plan_grpo(cfg, model_cfg, mesh, with_flops=True).flops

    depths = []
    def unrolled(build, layers):  # the same program, counted directly at its full depth
        depths.append(layers)
        return plan.flops_of(build(layers))

    monkeypatch.setattr(plan, "extrapolated_flops", unrolled)
    direct = plan.plan_grpo(cfg, model_cfg, mesh, with_flops=True).flops
    assert depths == [4]
    assert extrapolated == pytest.approx(direct, rel=1e-4)
    # What the planner corrects: the scanned program as compiled counts its layers as one.
    assert plan.flops_of(lowered["grpo update"]) < 0.5 * direct


@pytest.mark.slow
def test_a_config_that_cannot_fit_is_refused(tmp_path):
    # 2,048 conversations of 32,768 tokens: a 128 GiB cache per chip.
    proc, doc = _plan(tmp_path, "--topology=v5p-8", *MID, "--config.rl.num_slots=2048", "--config.rl.cache_len=32768",
                      "--programs=rollout", "--no-flops")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DOES NOT FIT" in proc.stdout and doc["fits"] is False


def test_topologies_and_their_errors():
    from gsjax.plan import TOPOLOGIES, parse_topology

    assert (TOPOLOGIES["v5p-16"].chips, TOPOLOGIES["v5p-16"].topology_name) == (8, "v5:2x2x2")
    assert (TOPOLOGIES["v6e-8"].chips, TOPOLOGIES["v6e-8"].topology_name) == (8, "v6e:2x4")
    assert parse_topology("cpu:8").chips == 8
    with pytest.raises(SystemExit, match="unknown --topology 'v9-1'"):
        parse_topology("v9-1")


def test_a_vision_language_policy_plans_its_image_programs():
    """The sampler programs a Qwen3-VL policy adds (image encode, prefill from image embeddings)
    lower and compile from abstract inputs, as the planner compiles them; one tool response of 5
    images of at most 160,000 pixels is 5 x 156 merged tokens at most, bucketed."""
    import jax
    import ml_collections
    from flax import nnx

    from gsjax.models.qwen3 import tiny_config
    from gsjax.models.qwen3_vl import QWEN3VL_8B, Qwen3VL, Qwen3VLConfig
    from gsjax.models.qwen3_vl_vision import tiny_vision_config
    from gsjax.parallel import make_mesh
    from gsjax.plan import response_patches
    from gsjax.sampling import SamplingParams
    from gsjax.sampling.sampler import SamplerPrograms

    limits = ml_collections.ConfigDict({"agent": {"limits": {"max_pixels": 160_000, "images_per_response": 5}}})
    assert response_patches(limits, QWEN3VL_8B) == (4096, 1024)  # 5 x 624 patches, 5 x 156 tokens
    cfg = Qwen3VLConfig(tiny_config(vocab_size=64, hidden_size=48, num_heads=4, num_kv_heads=2, head_dim=12,
                                    mrope_section=(2, 2, 2)),
                        tiny_vision_config(out_hidden_size=48), image_token_id=60, vision_start_token_id=61,
                        vision_end_token_id=62, video_token_id=63)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen3VL(cfg, rngs=nnx.Rngs(0))))
    p = SamplerPrograms(graphdef, state, make_mesh({"data": 1}, jax.devices()[:1]), params=SamplingParams(),
                        stop_token_ids=(0,), num_slots=2, cache_len=64, chunk=2)
    weights = p.abstract_weights(state)
    with p.context():
        encode = p.jitted_encode.lower(weights, *p.abstract_encode_inputs(64)).compile()
        prefill = p.jitted_prefill_vision.lower(weights, *p.abstract_prefill_vision_inputs(16, 16)).compile()
        text = p.jitted_prefill.lower(weights, *p.abstract_prefill_inputs(2, 16)).compile()
    embeds, deepstack = jax.eval_shape(lambda w, *a: p._encode(w, *a), weights, *p.abstract_encode_inputs(64))
    assert embeds.shape == (16, 48) and deepstack.shape == (2, 16, 48)
    assert all(c.memory_analysis() is not None for c in (encode, prefill, text))


def test_a_vision_language_learner_plans_its_images_and_holds_no_patches_by_patches_array(tmp_path):
    """The GRPO update of a Qwen3-VL policy (a tiny one, from its config.json alone) is planned with
    images: every row a trajectory's most (2 tool responses x 2 images of 624 patches), 4 rows per
    micro-batch, 16,384 patches split over the 4 batch shards; the tower's blocked attention holds
    no array with two sides of a device's 4,096 patches (plain holds [4,096, 16,384] scores)."""
    from gsjax.models import hf_io
    from gsjax.models.qwen3 import tiny_config
    from gsjax.models.qwen3_vl import Qwen3VLConfig
    from gsjax.models.qwen3_vl_vision import tiny_vision_config

    cfg = Qwen3VLConfig(tiny_config(vocab_size=512, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                                    mrope_section=(4, 2, 2)),
                        tiny_vision_config(depth=2, deepstack_visual_indexes=(0,), out_hidden_size=64, patch_size=16,
                                           num_position_embeddings=64),
                        image_token_id=500, vision_start_token_id=501, vision_end_token_id=502, video_token_id=503)
    assert cfg.vision.attention == "plain"  # "blocked" comes from the preset's run setting
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "config.json").write_text(json.dumps(hf_io.config_to_hf(cfg)))
    proc, doc = _plan(tmp_path, "--topology=cpu:8", "--config=configs/grpo.py:qwen3vl_8b", "--config.model.architecture=",
                      f"--config.model.path={tmp_path / 'policy'}", "--config.model.attention=blocked",
                      "--config.rl.cache_len=2048", "--config.rl.micro_batch_tokens=2048",
                      "--config.agent.limits.max_rounds=3", "--config.agent.limits.images_per_response=2",
                      "--programs=grpo", "--no-flops")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (update,) = doc["programs"]
    assert update["name"] == "grpo update" and update["mesh"] == {"data": 1, "fsdp": 4, "tp": 2}
    assert ("4 images per row (one trajectory at its most) x 624 patches: 9,984 patches per micro-batch, "
            "bucketed to 16,384") in update["note"]
    assert update["shardings"]["patches"] == "P(None, 'fsdp', None)"
    local = 16_384 // 4
    shapes = [[int(d) for d in s[s.index("[") + 1:-1].split(",")] for s in update["largest"]]
    assert shapes and not [s for s in shapes if sum(d >= local for d in s) >= 2], update["largest"]
    assert update["temp"] < local * 16_384 * 4  # one head's fp32 scores of one layer, per chip


def test_the_resident_figure_is_the_larger_phase_when_the_sampler_is_released():
    from gsjax.plan import Measured, resident_bytes

    def m(name, roles, temp):
        return Measured(name=name, mesh={"data": 1}, roles=roles, arguments=sum(roles.values()), outputs=0,
                        aliased=0, temp=temp, code=0)

    gib = 2**30
    measured = [m("rollout prefill", {"sampler weights": 8 * gib, "KV cache": 20 * gib}, 3 * gib),
                m("rollout decode", {"sampler weights": 8 * gib, "KV cache": 20 * gib}, 2 * gib),
                m("grpo update", {"parameters": 6 * gib, "optimizer": 12 * gib, "batch": 3 * gib}, 55 * gib)]
    phases = resident_bytes(measured)
    assert {k: sum(v.values()) // gib for k, v in phases.items()} == {"rollout": 49, "update": 76}
    held = resident_bytes(measured, release=False)["step"]
    assert sum(held.values()) // gib == 6 + 12 + 8 + 20 + 58  # everything at once, the largest temporaries
