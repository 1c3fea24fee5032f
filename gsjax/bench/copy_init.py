"""Does the tiny policy copy before training? Random initialisation against `copy_heads`.

    python -m gsjax.bench.copy_init [--steps 300] [--every 50] [--rope-theta 1e6] [--spaces 0.3]

The inits of the default tiny shape (2 layers, d=128, 4 heads of 32, 2 key-value heads) train side
by side with the same optimiser and the same batches on rows of repeated random spans (a span,
random filler, the span again: only copying predicts the second copy) and print, every `--every`
steps, the mean probability they give the copyable tokens of held-out rows (1 / vocabulary = no
copying): random initialisation, `copy_heads`, and `copy_heads` with its second induction head
matching two tokens back (`two_back`). With `--spaces`, that share of the tokens is one common
token (as the capitalised split writes the space before each name), so the token after a space is
copyable only from the one before it; the `@sp` columns give those tokens alone. The default run
takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gsjax.models.copy_heads import CopyHeads, set_copy_heads
from gsjax.models.interface import ModelInput
from gsjax.models.losses import token_logprobs
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.sft.trainer import SFTConfig, optimizer

# two_back as configs/grpo.py:copy_heads sets it (model.copy_heads)
INITS = {"random": None, "copy_heads": CopyHeads(), "two_back": CopyHeads(two_back=True, written_scale=0.3)}
SPACE = 20  # the common token of `--spaces`
SHAPE = dict(vocab_size=2048, hidden_size=128, intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=2,
             head_dim=32)


def repeated_spans(rng: np.random.Generator, rows: int, length: int, vocab: int, max_gap: int,
                   spans: tuple[int, int] = (4, 24), spaces: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of [span, random filler, the span again, ...] of ids in (SPACE, vocab), and a mask of the
    second copies' tokens that copying predicts (all but each copy's first). A share `spaces` of
    the spans' and fillers' tokens is the one id `SPACE`."""
    def draw(k: int) -> list[int]:
        ids = rng.integers(SPACE + 1, vocab, k)
        return [SPACE if s else int(i) for i, s in zip(ids, rng.random(k) < spaces)]

    ids, mask = np.zeros((rows, length), np.int32), np.zeros((rows, length), np.float32)
    for r in range(rows):
        row: list[int] = []
        m: list[int] = []
        while len(row) < length:
            span = draw(int(rng.integers(spans[0], spans[1] + 1)))
            filler = draw(int(rng.integers(0, max_gap + 1)))
            row += span + filler + span
            m += [0] * (len(span) + len(filler) + 1) + [1] * (len(span) - 1)
        ids[r], mask[r] = row[:length], m[:length]
    return ids, mask


def copy_probability(model, ids: np.ndarray, mask: np.ndarray) -> float:
    """Mean probability of the masked tokens."""
    p = np.exp(np.asarray(_logprobs(model, jnp.asarray(ids))))
    return float((p * mask).sum() / mask.sum())


@nnx.jit
def _logprobs(model, ids):
    return token_logprobs(model, ModelInput(ids))


@nnx.jit
def _step(model, opt, ids, mask):
    def loss(m):
        return -(token_logprobs(m, ModelInput(ids)) * mask).sum() / mask.sum()
    value, grads = nnx.value_and_grad(loss)(model)
    opt.update(model, grads)
    return value


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--max-gap", type=int, default=64, help="filler between a span and its copy, at most")
    ap.add_argument("--rope-theta", type=float, default=1e6)
    ap.add_argument("--spaces", type=float, default=0.0, help="the share of tokens that are one common token")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.steps < 0 or a.every < 1:
        ap.error(f"--steps must be >= 0 and --every >= 1 (got {a.steps} and {a.every})")
    if not 0.0 <= a.spaces < 1.0:
        ap.error(f"--spaces must be in [0, 1) (got {a.spaces})")
    cfg = tiny_config(**SHAPE, rope_theta=a.rope_theta)
    models = {k: Qwen3(cfg, rngs=nnx.Rngs(a.seed)) for k in INITS}
    for k, spec in INITS.items():
        if spec is not None:
            set_copy_heads(models[k], spec)
    # SFT's optimiser: AdamW, warm-up then cosine decay, clipped at norm 1
    opts = {k: nnx.Optimizer(m, optimizer(SFTConfig(steps=a.steps, lr=a.lr, warmup_frac=0.05)), wrt=nnx.Param)
            for k, m in models.items()}
    test = repeated_spans(np.random.default_rng(10_000 + a.seed), 16, a.length, cfg.vocab_size, a.max_gap,
                          spaces=a.spaces)
    columns = {k: (k, test[1]) for k in INITS}
    if a.spaces > 0:  # also the copyable tokens right after a space: only the token before it says which
        after = np.zeros_like(test[1])
        after[:, 1:] = test[0][:, :-1] == SPACE
        columns.update({f"{k}@sp": (k, test[1] * after) for k in INITS if k != "random"})
    batches = np.random.default_rng(a.seed)
    print(f"copyable tokens' mean probability on held-out rows (chance {1 / cfg.vocab_size:.4f}); "
          f"{a.rows} x {a.length} tokens per step, lr {a.lr}")
    print(f"{'step':>6}" + "".join(f"  {c:>13}" for c in columns))
    for step in range(a.steps + 1):
        if step % a.every == 0 or step == a.steps:
            p = {c: copy_probability(models[k], test[0], mask) for c, (k, mask) in columns.items()}
            print(f"{step:>6}" + "".join(f"  {p[c]:>13.3f}" for c in columns), flush=True)
        if step < a.steps:
            ids, mask = repeated_spans(batches, a.rows, a.length, cfg.vocab_size, a.max_gap, spaces=a.spaces)
            for k, m in models.items():
                _step(m, opts[k], jnp.asarray(ids), jnp.asarray(mask))


if __name__ == "__main__":
    main()
