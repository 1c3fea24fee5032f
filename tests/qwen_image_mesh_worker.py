"""Run as its own process (8 simulated CPU devices): the Qwen-Image transformer and the jitted
sampling loop sharded on several meshes, compared with one device. Prints one JSON line per mesh,
then one with the XLA partitioner bug that `layers.compute_value` works around: the bare jax
reproduction, and the transformer on (2, 2, 2) with the workaround switched off."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=15"
)

import json  # noqa: E402
import sys  # noqa: E402
from unittest import mock  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec  # noqa: E402

from gsjax.models.qwen_image import PromptEmbeds, QwenImageEditPipeline, TransformerConfig, VAEConfig  # noqa: E402
from gsjax.models.qwen_image import layers  # noqa: E402
from gsjax.parallel import logical_to_spec, make_mesh, shard_module  # noqa: E402

TCFG = TransformerConfig(num_layers=2, attention_head_dim=16, num_attention_heads=4, joint_attention_dim=32,
                         axes_dims_rope=(4, 6, 6))
VCFG = VAEConfig(base_dim=8, num_res_blocks=1)
SHAPES = ((1, 4, 4), (1, 2, 4))


def inputs():
    rs = np.random.RandomState(0)
    latents = rs.randn(8, 24, 64).astype(np.float32)
    text = rs.randn(8, 6, 32).astype(np.float32)
    mask = np.ones((8, 6), bool)
    mask[::2, 4:] = False
    return latents, text, mask, rs.uniform(0, 1, 8).astype(np.float32)


def forward(mesh=None):
    pipe = QwenImageEditPipeline.random(TCFG, VCFG, seed=0)
    model = pipe.transformer
    latents, text, mask, t = inputs()
    if mesh is not None:
        shard_module(model, mesh)
        put = lambda x, axes: jax.device_put(x, NamedSharding(mesh, logical_to_spec(axes, x.shape, dict(mesh.shape))))  # noqa: E731
        latents, text = put(latents, ("act_batch", "act_len", None)), put(text, ("act_batch", "act_len", None))
        mask, t = put(mask, ("act_batch", "act_len")), put(t, ("act_batch",))
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a, SHAPES))
    if mesh is None:
        out = fn(state, latents, text, mask, t)
    else:
        with jax.set_mesh(mesh):
            out = fn(state, latents, text, mask, t)
    if mesh is None:
        return np.asarray(out), None, None, None
    spec = str(model.transformer_blocks[0].attn.to_q.weight[...].sharding.spec)
    mod_spec = str(model.transformer_blocks[0].img_mod.weight[...].sharding.spec)
    with jax.set_mesh(mesh):  # the layout the matmul reads the stored (fsdp, tp) weight in
        used = jax.jit(lambda s: layers.compute_value(nnx.merge(graphdef, s).transformer_blocks[0].img_mod.weight))(state)
    return np.asarray(jax.block_until_ready(out)), spec, mod_spec, str(used.sharding.spec)


def sample(mesh=None):
    pipe = QwenImageEditPipeline.random(TCFG, VCFG, seed=0)
    if mesh is not None:
        shard_module(pipe.transformer, mesh)
        pipe = QwenImageEditPipeline(pipe.transformer, pipe.vae, pipe.scheduler)
    rs = np.random.RandomState(1)
    ref = rs.uniform(-1, 1, (32, 64, 3)).astype(np.float32)
    prompt = PromptEmbeds(rs.randn(1, 5, 32).astype(np.float32), np.ones((1, 5)))
    negative = PromptEmbeds(rs.randn(1, 3, 32).astype(np.float32), np.ones((1, 3)))

    def run():
        tokens, shapes = pipe.encode_references([ref])
        return pipe.sample(pipe.noise(0, 64, 64), 64, 64, tokens, shapes, prompt, negative, num_steps=3, true_cfg_scale=4.0)

    if mesh is None:
        return np.asarray(run())
    with jax.set_mesh(mesh):
        return np.asarray(jax.block_until_ready(run()))


def xla_matmul_repro() -> float:
    """The partitioner bug in plain jax (docs/qwen_image.md): x [8, 6, 64] batch-sharded over
    data x fsdp and feature-sharded over tp, times w [64, 64] stored (tp, fsdp); on the CPU backend
    of jax 0.10.2 rows 2-3 and 4-5 of the product come back swapped."""
    mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tp"), axis_types=(AxisType.Auto,) * 3)
    batch = ("data", "fsdp")
    x = np.random.RandomState(0).randn(8, 6, 64).astype(np.float32)
    w = np.random.RandomState(1).randn(64, 64).astype(np.float32)
    f = jax.jit(lambda x, w: x @ w, out_shardings=NamedSharding(mesh, PartitionSpec(batch, None, "tp")))
    y = f(jax.device_put(x, NamedSharding(mesh, PartitionSpec(batch, None, "tp"))),
          jax.device_put(w, NamedSharding(mesh, PartitionSpec("tp", "fsdp"))))
    return float(np.abs(np.asarray(jax.block_until_ready(y)) - x @ w).max())


def main():
    assert len(jax.devices()) == 8, jax.devices()
    ref, _, _, _ = forward()
    ref_sample = sample()
    for shape in [(1, 1, 8), (1, 4, 2), (2, 2, 2)]:
        mesh = make_mesh(dict(zip(("data", "fsdp", "tp"), shape)))
        out, spec, mod_spec, used_spec = forward(mesh)
        row = {"mesh": shape, "max_abs_err": float(np.abs(out - ref).max()), "out_std": float(ref.std()),
               "to_q_spec": spec, "img_mod_spec": mod_spec, "img_mod_used_spec": used_spec}
        if shape != (1, 4, 2):  # the whole sampling loop on two meshes (it compiles the VAE too)
            row["sample_max_abs_err"] = float(np.abs(sample(mesh) - ref_sample).max())
        print(json.dumps(row), flush=True)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tp": 2})
    with mock.patch.object(layers, "compute_value", lambda v: v[...]):  # leave the weights' layout to XLA
        unguarded, _, _, _ = forward(mesh)
    print(json.dumps({"xla_bug": True, "repro_max_abs_err": xla_matmul_repro(),
                      "unguarded_2x2x2_max_abs_err": float(np.abs(unguarded - ref).max())}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
