"""Training step throughput: one forward + backward + AdamW step, gsjax (jitted) against PyTorch eager.

    python -m gsjax.bench.train_step          # ~1 min on 2 CPU cores
    python -m gsjax.bench.train_step --batch 2 --seq 32 --repeats 1   # a smoke run

Both sides start from the same weights (gsjax model -> save_model -> from_pretrained, float32) and
take steps on the same [batch, seq] token batch: mean next-token cross entropy over all positions,
then AdamW with the same learning rate, betas, eps and weight decay (decay on every parameter, as
both libraries do by default). The initial losses are printed side by side, and so are the losses
after the timed steps, since both sides take the same number of steps on the same batch.

The gsjax step is one `jax.jit` over the split parameter and optimizer state with both donated
(`--nnx`: `nnx.jit` with `nnx.Optimizer`, the same speed within noise), and its loss is optax's
integer-label softmax cross entropy on the model's logits (`--loss token_logprobs`: the learner's
`token_logprobs` + `masked_mean_nll`, the same value, about 15% slower per step). PyTorch runs with
its defaults (threads, SDPA attention, the AdamW implementation).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

from gsjax.bench.common import Ratio, add_model_flags, interleaved, model_config, print_table, twin_models
from gsjax.models.interface import ModelInput
from gsjax.models.losses import masked_mean_nll, token_logprobs
from gsjax.models.qwen3 import Qwen3


@dataclasses.dataclass(frozen=True)
class TrainStepBench:
    ratio: Ratio  # gsjax steps/s over torch steps/s
    initial_loss: tuple[float, float]  # (gsjax, torch) before any step
    final_loss: tuple[float, float]  # (gsjax, torch) after the same number of steps


def next_token_loss(model: Qwen3, tokens: jax.Array) -> jax.Array:
    """Mean cross entropy of tokens[:, 1:] given their prefixes (what HF's `labels=tokens` computes),
    as optax's fused softmax cross entropy."""
    return optax.softmax_cross_entropy_with_integer_labels(model(ModelInput(tokens))[:, :-1], tokens[:, 1:]).mean()


def next_token_loss_via_logprobs(model: Qwen3, tokens: jax.Array) -> jax.Array:
    """The same loss through gsjax.models.losses (the learner's per-token log-probabilities)."""
    mask = jnp.ones(tokens.shape, jnp.float32).at[:, 0].set(0.0)  # position 0 has no prefix
    return masked_mean_nll(token_logprobs(model, ModelInput(tokens)), mask)


LOSSES = {"optax": next_token_loss, "token_logprobs": next_token_loss_via_logprobs}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--nnx", action="store_true", help="time an nnx.jit step over nnx.Optimizer instead")
    parser.add_argument("--loss", choices=sorted(LOSSES), default="optax", help="how gsjax computes the cross entropy")
    add_model_flags(parser)
    return parser.parse_args(argv)


LossFn = Callable[[Qwen3, jax.Array], jax.Array]
Step = tuple[Callable[[jax.Array], jax.Array], Callable[[], Qwen3]]  # (step(tokens) -> loss, current model)


def jit_step(model: Qwen3, tx: optax.GradientTransformation, loss_fn: LossFn) -> Step:
    """One jax.jit over the split state, the parameters and optimizer state donated."""
    graphdef, params = nnx.split(model)
    state = {"params": params, "opt": tx.init(params)}

    @partial(jax.jit, donate_argnums=(0, 1))
    def update(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p), tokens))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def step(tokens: jax.Array) -> jax.Array:
        state["params"], state["opt"], loss = update(state["params"], state["opt"], tokens)
        return loss

    return step, lambda: nnx.merge(graphdef, state["params"])


def nnx_step(model: Qwen3, tx: optax.GradientTransformation, loss_fn: LossFn) -> Step:
    """The same step written with nnx.Optimizer and nnx.jit (model updated in place)."""
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def update(model, opt, tokens):
        loss, grads = nnx.value_and_grad(loss_fn)(model, tokens)
        opt.update(model, grads)
        return loss

    return (lambda tokens: update(model, opt, tokens)), (lambda: model)


def main(argv: Sequence[str] | None = None) -> TrainStepBench:
    args = parse_args(argv)
    cfg = model_config(args)
    model, reference = twin_models(cfg, args.seed)
    tokens_np = np.random.default_rng(args.seed).integers(0, cfg.vocab_size, (args.batch, args.seq))
    tokens = jnp.asarray(tokens_np, jnp.int32)
    input_ids = torch.from_numpy(tokens_np)

    # torch.optim.AdamW's defaults for betas and eps, spelled out on both sides.
    betas, eps = (0.9, 0.999), 1e-8
    tx = optax.adamw(args.lr, b1=betas[0], b2=betas[1], eps=eps, weight_decay=args.weight_decay)
    torch_opt = torch.optim.AdamW(
        reference.parameters(), lr=args.lr, betas=betas, eps=eps, weight_decay=args.weight_decay
    )
    reference.train()

    loss_fn = LOSSES[args.loss]
    initial = (float(jax.jit(loss_fn)(model, tokens)), _torch_loss(reference, input_ids))
    step, current_model = (nnx_step if args.nnx else jit_step)(model, tx, loss_fn)

    def run_gsjax() -> None:
        jax.block_until_ready(step(tokens))

    def run_torch() -> None:
        torch_opt.zero_grad(set_to_none=True)
        reference(input_ids=input_ids, labels=input_ids).loss.backward()
        torch_opt.step()

    timings = interleaved({"gsjax": run_gsjax, "torch": run_torch}, repeats=args.repeats, warmup=args.warmup)
    final = (float(jax.jit(loss_fn)(current_model(), tokens)), _torch_loss(reference, input_ids))

    steps = args.warmup + args.repeats
    print(
        f"train step: batch {args.batch} x {args.seq} tokens, AdamW lr {args.lr} wd {args.weight_decay}; "
        f"{cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size} "
        f"({cfg.num_params() / 1e6:.2f} M params); "
        f"gsjax {'nnx.jit + nnx.Optimizer' if args.nnx else 'jax.jit, donated'}, {args.loss} loss; "
        f"torch eager, {torch.get_num_threads()} threads"
    )
    for when, (ours, theirs) in (("initial loss", initial), (f"loss after {steps} steps", final)):
        print(f"{when}: gsjax {ours:.6f}  torch {theirs:.6f}  (|diff| {abs(ours - theirs):.1e})")
    ratios = print_table(list(timings.values()), work=1, unit="steps", baseline="torch")
    print(f"gsjax / torch steps/s: {ratios['gsjax'].median:.2f}x")
    return TrainStepBench(ratios["gsjax"], initial, final)


def _torch_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(input_ids=input_ids, labels=input_ids).loss)


if __name__ == "__main__":
    main()
