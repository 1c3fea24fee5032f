"""Run as its own process (8 simulated CPU devices): forward+backward of a tiny Qwen3 on several
meshes, compared with one device. Prints one JSON line per mesh."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=15"
)

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from gsjax.models.interface import ModelInput  # noqa: E402
from gsjax.models.losses import masked_mean_nll, token_logprobs  # noqa: E402
from gsjax.models.qwen3 import Qwen3, tiny_config  # noqa: E402
from gsjax.parallel import logical_to_spec, make_mesh, shard_module  # noqa: E402

CFG = tiny_config(vocab_size=256, hidden_size=64, intermediate_size=128, num_heads=8, num_kv_heads=4, head_dim=16,
                  tie_embeddings=False)


def batch():
    rs = np.random.RandomState(0)
    tokens = rs.randint(0, CFG.vocab_size, size=(8, 32)).astype(np.int32)
    segments = np.ones((8, 32), np.int32)
    segments[:, 24:] = rs.randint(0, 2, size=(8, 1))  # some rows padded at the end
    mask = (segments == 1).astype(np.float32)
    return tokens, segments, mask


def loss_fn(model, tokens, segments, mask):
    return masked_mean_nll(token_logprobs(model, ModelInput(tokens, segment_ids=segments)), mask)


@jax.jit
def grad_step(state, graphdef, tokens, segments, mask):
    return jax.value_and_grad(lambda s: loss_fn(nnx.merge(graphdef, s), tokens, segments, mask))(state)


def run(mesh=None):
    model = Qwen3(CFG, rngs=nnx.Rngs(0))
    tokens, segments, mask = batch()
    if mesh is not None:
        shard_module(model, mesh)
        spec = logical_to_spec(("act_batch", "act_len"), tokens.shape, dict(mesh.shape))
        tokens, segments, mask = (jax.device_put(x, NamedSharding(mesh, spec)) for x in (tokens, segments, mask))
    graphdef, state = nnx.graphdef(model), nnx.state(model, nnx.Param)
    if mesh is None:
        loss, grads = grad_step(state, graphdef, tokens, segments, mask)
    else:
        with jax.set_mesh(mesh):
            loss, grads = grad_step(state, graphdef, tokens, segments, mask)
    jax.block_until_ready((loss, grads))
    flat = {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(grads)}
    shardings = {"/".join(map(str, p)): str(v[...].sharding.spec) for p, v in nnx.to_flat_state(state)
                 if mesh is not None}
    return float(loss), flat, shardings


def greedy_tokens(mesh=None):
    from gsjax.sampling import Sampler, SamplingParams

    model = Qwen3(CFG, rngs=nnx.Rngs(0))
    if mesh is not None:
        shard_module(model, mesh)
    sampler = Sampler(model, num_slots=8, cache_len=64, params=SamplingParams(temperature=0.0), mesh=mesh)
    prompts = [batch()[0][i, : 5 + i].tolist() for i in range(8)]
    return [t.tokens for t in sampler.generate(prompts, max_new_tokens=12)]


def main():
    assert len(jax.devices()) == 8, jax.devices()
    ref_loss, ref_grads, _ = run()
    for shape in [(8, 1, 1), (2, 2, 2), (1, 1, 8)]:
        mesh = make_mesh(dict(zip(("data", "fsdp", "tp"), shape)))
        loss, grads, shardings = run(mesh)
        grad_err = max(float(np.abs(grads[k] - ref_grads[k]).max()) for k in ref_grads)
        print(json.dumps({
            "mesh": shape, "loss": loss, "ref_loss": ref_loss, "loss_err": abs(loss - ref_loss),
            "grad_err": grad_err, "grad_norm": float(np.sqrt(sum((g**2).sum() for g in ref_grads.values()))),
            "q_proj_spec": shardings["layers/0/self_attn/q_proj"], "embed_spec": shardings["embed"],
        }), flush=True)
    # A sharded model exports to the same Hugging Face folder as an unsharded one.
    import tempfile

    from gsjax.models import hf_io

    sharded = Qwen3(CFG, rngs=nnx.Rngs(0))
    mesh = make_mesh({"data": 1, "fsdp": 2, "tp": 4})
    shard_module(sharded, mesh)
    folder = tempfile.mkdtemp()
    hf_io.save_model(sharded, folder)
    reloaded = hf_io.load_model(folder)
    tokens = jnp.asarray(batch()[0])
    same = bool(np.array_equal(np.asarray(reloaded(ModelInput(tokens))), np.asarray(Qwen3(CFG, rngs=nnx.Rngs(0))(ModelInput(tokens)))))
    placed = hf_io.load_model(folder, mesh)
    spec = str(placed.layers[0].mlp.gate_proj[...].sharding.spec)
    print(json.dumps({"export_from_mesh_same": same, "loaded_gate_spec": spec}), flush=True)

    ref_tokens = greedy_tokens()
    for shape in [(2, 2, 2), (1, 1, 8)]:
        mesh = make_mesh(dict(zip(("data", "fsdp", "tp"), shape)))
        print(json.dumps({"sampling_mesh": shape, "same_tokens": greedy_tokens(mesh) == ref_tokens}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
