"""An initialisation that starts a tiny Qwen3 decoder with the copying circuit pretrained LMs have.

A pretrained policy copies a name it has just read (from the prompt or a tool response) into its
own text through induction heads: a previous-token head in an early layer and, above it, a head that
finds the earlier occurrence of the current token and predicts the token that followed it. A tiny
policy trained from scratch on a 2-core CPU does not get there in time: on pure repeated random
spans the default tiny shape needs about 600 steps of 2,048 tokens before it copies at all, and
SFT's data, where copying is a small part of the loss, about twice that (docs/training.md).

`set_copy_heads` writes that circuit into a freshly built model, the rest of it left as built; then
training starts from it. The residual stream of width E is laid out as
- dims [0, n): the token embedding (random, std `embed_std`); n = E - head_dim - 1;
- dim n: a constant `bias_value` in every embedding (it shifts every tied logit equally, so it
  changes no prediction), which lets an attention head attend by position alone;
- dims [n + 1, n + 1 + head_dim // 2): where layer 0 writes the previous token.
Layer 0, head 0 attends to the position before it: its query and key read only the constant dim
and sit on the two fastest rotary frequencies, phased so that q . k peaks at an offset of 1. Its
value is a projection A of the token subspace onto head_dim // 2 dims, written to the
previous-token dims. Layer 1, heads 0 and H / KV (one per key-value head) are induction heads: the
query projects the current token with the same A, the key reads the previous-token dims, both on
the slowest rotary frequencies (so a match a few hundred tokens back still scores as a match), and
the value projects the attended token through C (orthonormal rows, one block per head) and writes
it back, times `copy_gain`, into the token subspace, so the tied output layer reads it as the next
token. With `two_back`, layer 0's head H / KV writes the token two positions back into the other
head_dim // 2 dims (the two-back dims), and the second induction head matches on the pair: its query
reads the previous-token dims, its key the two-back dims, so it attends to the position two after an
earlier occurrence of the previous token and predicts what stood there. Copying "SWIFT HILLS" (the
capitalised split writes it "SWIFT", " ", "HILLS"), the step after the space is decided by "SWIFT",
not by the space, which every name in the context follows. Every other head's output projection
and every MLP's down projection start at zero (a common zero-init of residual branches), so nothing
else disturbs the circuit at step 0; they learn from the first step. The query and key norms of
layers 0 and 1 are scaled to `sharpness_prev` and `sharpness_copy`, which make the attention sharp.

`python -m gsjax.bench.copy_init` compares the inits on repeated random spans, side by side: at
step 0 the default tiny shape gives a copyable token a mean probability of about 0.6 with the
circuit and 1 / vocabulary without.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

FAST_PAIRS = (0, 1)  # the rotary pairs (highest frequencies) the previous-token head uses


@dataclasses.dataclass(frozen=True)
class CopyHeads:
    embed_std: float = 0.1
    bias_value: float = 1.0
    sharpness_prev: float = 3.5
    sharpness_copy: float = 3.0
    copy_gain: float = 6.0
    seed: int = 0
    # The second induction head matches two tokens back (see `copy_head_weights`): it copies the
    # token after an earlier occurrence of the previous token's pair, where the current token alone
    # (a space, a single letter) occurs too often to say which occurrence is being copied.
    two_back: bool = False
    # What layer 0 writes to the previous-token (and two-back) dims is scaled by this: the induction
    # heads' query and key norms undo any scale, while the final norm counts these dims in the RMS
    # that divides every logit.
    written_scale: float = 1.0


def orthonormal_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n x d with orthonormal rows (n <= d)."""
    q, _ = np.linalg.qr(rng.standard_normal((d, n)))
    return q.T


def offset_key(theta: float, head_dim: int, pair: int, offset: int) -> tuple[float, float]:
    """The key's (x1, x2) on a rotary pair such that, with the query (1, 0) on that pair, the
    rotated q . k is largest when the key is `offset` positions before the query (rotate-half
    RoPE: pair p is dims p and p + head_dim / 2, turning by position * theta^(-2p / head_dim))."""
    omega = theta ** (-2.0 * pair / head_dim)
    return float(np.cos(offset * omega)), float(np.sin(offset * omega))


def slow_dims(head_dim: int) -> list[int]:
    """Both dims of the slower half of the rotary pairs."""
    half = head_dim // 2
    return list(range(half // 2, half)) + list(range(half + half // 2, head_dim))


def check_shape(cfg) -> None:
    if cfg.num_layers < 2 or cfg.num_kv_heads < 2 or cfg.head_dim < 8:
        raise ValueError(f"model.tiny_init='copy_heads' needs at least 2 layers, 2 key-value heads and head_dim >= 8; "
                         f"got num_layers={cfg.num_layers}, num_kv_heads={cfg.num_kv_heads}, head_dim={cfg.head_dim}")
    if cfg.hidden_size < 2 * cfg.head_dim + 1:
        raise ValueError(f"model.tiny_init='copy_heads' needs hidden_size >= 2 * head_dim + 1 "
                         f"(got {cfg.hidden_size} and {cfg.head_dim})")
    if not cfg.qk_norm or cfg.scan_layers:
        raise ValueError("model.tiny_init='copy_heads' is for a Qwen3 decoder with query/key norms and unscanned layers")


def copy_head_weights(cfg, init: dict[str, np.ndarray], spec: CopyHeads) -> dict[str, np.ndarray]:
    """The new values of the parameters in `init` (named by their dotted nnx paths: "embed",
    "layers.0.self_attn.q_proj", ...), from their freshly built values; the ones the circuit does
    not touch come back as they were. Pure: numpy in, numpy out."""
    check_shape(cfg)
    if not spec.written_scale > 0:  # 0 writes nothing for the induction heads' keys to match
        raise ValueError(f"model.copy_heads.written_scale must be > 0, got {spec.written_scale}")
    e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    n = e - d - 1
    const, prev = n, n + 1
    two = prev + d // 2  # the two-back dims (with `two_back`)
    rng = np.random.default_rng(spec.seed)
    out = {k: np.array(v, np.float32) for k, v in init.items()}
    emb = np.zeros(init["embed"].shape, np.float32)
    emb[:, :n] = spec.embed_std * rng.standard_normal((emb.shape[0], n))
    emb[:, const] = spec.bias_value
    out["embed"] = emb
    slow = slow_dims(d)
    a = orthonormal_rows(rng, len(slow), n)
    c = orthonormal_rows(rng, 2 * d, n)
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        out[p + "self_attn.o_proj"][:] = 0.0
        out[p + "mlp.down_proj"][:] = 0.0
    q, k, v, o = (out[f"layers.0.self_attn.{w}"] for w in ("q_proj", "k_proj", "v_proj", "o_proj"))
    # Layer 0's position heads: (query head, key-value head, offset, where it writes). The previous
    # token always; with two_back, head H / KV (key-value head 1) the token two back.
    position_heads = [(0, 0, 1, prev)] + ([(h // kv, 1, 2, two)] if spec.two_back else [])
    for head, kv_head, offset, to in position_heads:
        q[:, head] = k[:, kv_head] = v[:, kv_head] = 0.0
        for pair in FAST_PAIRS:
            q[const, head, pair] = 1.0
            k[const, kv_head, pair], k[const, kv_head, pair + d // 2] = offset_key(cfg.rope_theta, d, pair, offset)
        v[:n, kv_head, :len(slow)] = a.T
        o[head, :len(slow), to:to + len(slow)] = spec.written_scale * np.eye(len(slow))
    q, k, v, o = (out[f"layers.1.self_attn.{w}"] for w in ("q_proj", "k_proj", "v_proj", "o_proj"))
    for kv_head, head in ((0, 0), (1, h // kv)):
        q[:, head] = k[:, kv_head] = v[:, kv_head] = 0.0
        pair_match = spec.two_back and kv_head == 1
        for j, dim in enumerate(slow):
            if pair_match:  # the previous token here against the token two back there
                q[prev + j, head, dim] = 1.0
                k[two + j, kv_head, dim] = 1.0
            else:  # the current token here against the previous token there
                q[:n, head, dim] = a[j]
                k[prev + j, kv_head, dim] = 1.0
        block = c[kv_head * d:(kv_head + 1) * d]
        v[:n, kv_head, :] = block.T
        o[head, :, :n] = spec.copy_gain * block
    for i, s in ((0, spec.sharpness_prev), (1, spec.sharpness_copy)):
        for norm in ("q_norm", "k_norm"):
            out[f"layers.{i}.self_attn.{norm}.scale"][:] = s
    return out


def set_copy_heads(model, spec: CopyHeads = CopyHeads()) -> None:
    """Write the copying circuit into a freshly built Qwen3 decoder (in place; a Qwen3-VL's
    language model: its text tokens turn by the same position on every multimodal-RoPE row)."""
    model = getattr(model, "language_model", model)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    names = {".".join(map(str, path)): path for path in flat}
    new = copy_head_weights(model.cfg, {name: np.asarray(flat[path][...]) for name, path in names.items()}, spec)
    for name, path in names.items():
        flat[path].set_value(jnp.asarray(new[name], flat[path].dtype))
    nnx.update(model, nnx.from_flat_state(flat))
