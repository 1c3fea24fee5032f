"""Self-attention of full passes with packed segments: the decoder's causal attention (training,
scoring), several ways, and the vision towers' bidirectional attention among the patches of one
image, two ways.

One function, `causal_attention(q, k, v, segment_ids, impl=...)`, with one meaning for every
implementation:

- q: [B, T, H, D]; k, v: [B, T, KV, D]; H is a multiple of KV (grouped-query attention: query head
  h reads kv head h // (H // KV)).
- segment_ids: [B, T] int32; 0 marks padding. A query attends to the keys at positions <= its own
  in the same row with the same non-zero segment id (several sequences packed per row, each a
  contiguous run). Outputs at padding queries are finite but otherwise unspecified.
- Scale D**-0.5, softmax in float32, output [B, T, H, D] in q.dtype. Differentiable in q, k, v.

The implementations (`IMPLEMENTATIONS`):

- "plain": one masked softmax over the whole [T, T] scores. The reference the others are tested
  against; any backend.
- "blocked": when T % block == 0 and T > block, each block of `block` queries attends only to the
  keys up to its block's end (the masked upper triangle is skipped, about half the work);
  otherwise exactly "plain". Any backend; the CPU default.
- "xla": `jax.nn.dot_product_attention(implementation="xla")` with `is_causal=True` and the
  segment mask as a boolean `mask` of shape [B, 1, T, T] (broadcast over heads). Any backend;
  materialises the scores like "plain".
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (cuDNN flash attention, NVIDIA
  GPUs). In jax 0.10.2 that public API has no argument for packed segments: its
  `query_seq_lengths` / `key_value_seq_lengths` express one run of valid tokens per row only, and
  the packed layout that cuDNN itself supports (per-segment `q_offsets` / `kv_offsets`, Hopper and
  later) is reachable only through the private `jax._src.cudnn` module. So packing is expressed
  the one public way that is exact: `is_causal=True` (cuDNN skips the upper triangle) plus the
  segment mask as a boolean `mask` [B, 1, T, T], which jax turns into an additive bias of q.dtype
  (a large negative number where masked). That costs B*T*T bias elements in memory and a bias
  gradient in the backward pass, but no [B, H, T, T] scores. cuDNN's own constraints, checked
  here with a ValueError before the call: q/k/v in bfloat16 or float16 (no float32), head dim a
  multiple of 8 and <= 256 (<= 128 before Hopper; cuDNN checks that itself), T even (a bias in
  training needs even sequence lengths). On a machine without cuDNN, jax raises "cuDNN is not
  detected"; that is re-raised here as a ValueError naming the backend.
  Tested without a GPU: the argument checks, and (with jax's cuDNN version probe stubbed) that the
  forward and the gradient trace and lower for the `cuda` platform to cuDNN's fused-attention
  custom calls with the [B, 1, T, T] bias. Not tested: running it; the numbers; whether the
  installed cuDNN accepts a bias broadcast over heads with its gradient at a given size.
- "splash": Pallas TPU splash attention (`make_splash_mha` with a causal `MultiHeadMask`,
  `SegmentIds` for the packing, kv head h // (H // KV) as above, vmapped over the batch), flash
  attention that never materialises [T, T]. The kernel's blocks are `block` (queries and keys,
  forward and backward); T must be a multiple of `block` and `block` of 128 (ValueError
  otherwise). When a mesh with more than one device is set (`jax.set_mesh`), the kernel runs
  inside `jax.shard_map` (Mosaic kernels cannot be partitioned automatically) with the batch
  sharded as the logical axis `act_batch` and the heads as `act_heads` / `act_kv_heads`, from the
  rules in `gsjax.parallel.rules`; sequence and head dim stay whole on every device. When the
  kv heads do not divide over their mesh axes but the query heads do, both are replicated (each
  device must hold the kv heads of its query heads). `interpret=None` picks interpret mode when
  the platform (the mesh's devices, or the default backend without a mesh) is not a TPU; pass
  `interpret=False` to compile for a TPU ahead of time without a mesh on a CPU host.

The vision towers' attention, `segment_attention(q, k, v, segment_ids, impl=...)`:

- q, k, v: [P, H, D], the patches of all of a call's images in one sequence; segment_ids: [P]
  int32, one id per frame of each image, 0 for padding. A patch attends to every patch of its own
  segment, before or after it (no causality); a padding patch attends to nothing, is seen by none,
  and its output is 0 (so are the gradients through it). Scale D**-0.5, softmax in float32,
  output in q.dtype, differentiable in q, k, v.
- "plain": `attend` with `segment_mask` over the whole [H, P, P] scores. Tiny towers, the reference.
- "blocked": flash attention in plain JAX (online softmax over key blocks, and a custom backward
  pass that recomputes each block's probabilities from the saved log-sum-exp): memory is
  O(P x block) per head instead of O(P^2), at any P (padded to a multiple of `block` inside).
  Only the key blocks that can share a segment with a query block are visited: for each query
  block, the run of key blocks from the first to the last whose segment-id range overlaps its own
  (exactly the blocks that share a segment when segments are contiguous runs numbered in order,
  as vision layouts are; any layout stays correct, the run is only longer). So the work is about
  sum over images of patches^2, not P^2. With a mesh of more than one device set, it runs inside
  `jax.shard_map`: the queries (and the output) stay sharded as the logical axes `act_patches` /
  `act_heads` say, keys and values are gathered along the patches ([P, H, D] per device, never
  [P, P]), and each device attends with its own query blocks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from gsjax.parallel.rules import logical_to_spec

IMPLEMENTATIONS = ("plain", "blocked", "xla", "cudnn", "splash")
SEGMENT_IMPLEMENTATIONS = ("plain", "blocked")  # of segment_attention

Q_AXES = ("act_batch", "act_len", "act_heads", "act_head_dim")
KV_AXES = ("act_batch", "act_len", "act_kv_heads", "act_head_dim")
PATCH_AXES = ("act_patches", "act_heads", "act_head_dim")  # q, k, v of segment_attention


def segment_mask(segment_ids: jax.Array) -> jax.Array:
    """[B, T, T] bool: query t may see key s of the same non-zero segment (no causality)."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return same & (segment_ids[:, None, :] != 0)


def causal_segment_mask(segment_ids: jax.Array) -> jax.Array:
    """[B, T, T] bool: the full mask of `causal_attention` (causal and same non-zero segment)."""
    t = segment_ids.shape[1]
    return jnp.tril(jnp.ones((t, t), bool))[None] & segment_mask(segment_ids)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention under any mask: q [B, T, H, D], k/v [B, S, KV, D], mask [B, T, S]
    -> [B, T, H, D]. One fp32 softmax over the whole scores (rows with nothing visible come out
    as a uniform average, finite)."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (d**-0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, d)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array, *, block: int = 0) -> jax.Array:
    """The sampler's attention over a KV cache: query (b, t) at position positions[b, t] sees the
    cache entries 0..positions[b, t] of its row. q [B, T, H, D], k/v [B, S, KV, D].

    `block` > 0 (dividing S) walks the cache in blocks of that many keys with an online softmax,
    so the scores held at once are [B, H, T, block] instead of [B, H, T, S], and blocks past the
    last position any row has reached are skipped (`lax.cond`): a step costs what the longest live
    conversation holds, rounded up to a block, not the cache's capacity. 0: one softmax over all.
    """
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    if block <= 0 or block >= s or s % block:
        return attend(q, k, v, jnp.arange(s)[None, None, :] <= positions[:, :, None])
    g = h // kvh
    qg = q.reshape(b, t, kvh, g, d)
    n = s // block
    kb, vb = k.reshape(b, n, block, kvh, d), v.reshape(b, n, block, kvh, d)
    last = positions.max()

    def visit(carry, j):
        top, total, acc = carry  # [B, KV, G, T], [B, KV, G, T], [B, T, KV, G, D] (fp32)
        kj = jax.lax.dynamic_index_in_dim(kb, j, 1, keepdims=False)
        vj = jax.lax.dynamic_index_in_dim(vb, j, 1, keepdims=False)
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, kj, preferred_element_type=jnp.float32) * (d**-0.5)
        seen = (j * block + jnp.arange(block))[None, None, :] <= positions[:, :, None]  # [B, T, block]
        scores = jnp.where(seen[:, None, None], scores, -jnp.inf)
        new_top = jnp.maximum(top, scores.max(axis=-1))
        shift = jnp.where(jnp.isfinite(new_top), new_top, 0.0)  # rows with nothing seen yet
        p = jnp.exp(scores - shift[..., None])
        scale = jnp.exp(top - shift)
        total = total * scale + p.sum(axis=-1)
        acc = acc * jnp.moveaxis(scale, 3, 1)[..., None] + jnp.einsum(
            "bkgts,bskd->btkgd", p.astype(v.dtype), vj, preferred_element_type=jnp.float32)
        return new_top, total, acc

    def body(carry, j):
        return jax.lax.cond(j * block <= last, visit, lambda c, _: c, carry, j), None

    init = (jnp.full((b, kvh, g, t), -jnp.inf, jnp.float32), jnp.zeros((b, kvh, g, t), jnp.float32),
            jnp.zeros((b, t, kvh, g, d), jnp.float32))
    (_, total, acc), _ = jax.lax.scan(body, init, jnp.arange(n))
    out = acc / jnp.moveaxis(total, 3, 1)[..., None]  # every row sees at least key 0
    return out.reshape(b, t, h, d).astype(q.dtype)


def _plain(q, k, v, segment_ids):
    return attend(q, k, v, causal_segment_mask(segment_ids))


def _blocked(q, k, v, segment_ids, block):
    t = q.shape[1]
    if not (t % block == 0 and t > block):
        return _plain(q, k, v, segment_ids)
    mask = causal_segment_mask(segment_ids)
    # Each block of queries attends to the keys up to its end only: the blocks above the
    # diagonal are masked anyway, and skipping them halves the work.
    ends = range(block, t + 1, block)
    return jnp.concatenate(
        [attend(q[:, e - block:e], k[:, :e], v[:, :e], mask[:, e - block:e, :e]) for e in ends], axis=1
    )


def _xla(q, k, v, segment_ids):
    mask = segment_mask(segment_ids)[:, None]  # [B, 1, T, T], broadcast over heads
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="xla")


def _platform() -> str:
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        return mesh.abstract_device.platform
    return jax.default_backend()


def _cudnn(q, k, v, segment_ids):
    b, t, h, d = q.shape
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            f"impl='cudnn' needs bfloat16 or float16 q/k/v (cuDNN flash attention has no float32); "
            f"got {q.dtype}. Cast, or use impl='xla' or 'plain'."
        )
    if d % 8 or d > 256:
        raise ValueError(f"impl='cudnn' needs a head dim that is a multiple of 8 and <= 256; got D={d}")
    if t % 2:
        raise ValueError(f"impl='cudnn' needs an even sequence length with a segment mask (bias); got T={t}")
    mask = segment_mask(segment_ids)[:, None]  # [B, 1, T, T]: packing; causality is cuDNN's
    try:
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="cudnn")
    except RuntimeError as e:
        if "cuDNN is not detected" not in str(e):
            raise
        raise ValueError(
            f"impl='cudnn' needs an NVIDIA GPU with cuDNN; none here (platform {_platform()!r}). "
            f"Use impl='xla', 'blocked' or 'plain'."
        ) from e


def _splash_local(q, k, v, segment_ids, block, interpret):
    """Splash attention on whole arrays of one device: q [B, T, H, D], k/v [B, T, KV, D]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, h, d = q.shape
    mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(h)])
    sizes = sk.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )
    # The MHA kernel maps query head h to kv head h // (H // KV): grouped-query attention as-is.
    kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
    scale = jnp.asarray(d**-0.5, jnp.float32)
    qh = (jnp.swapaxes(q, 1, 2).astype(jnp.float32) * scale).astype(q.dtype)  # [B, H, T, D]
    kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, KV, T, D]
    seg = segment_ids.astype(jnp.int32)

    def one(qb, kb, vb, sb):
        return kernel(qb, kb, vb, segment_ids=sk.SegmentIds(q=sb, kv=sb))

    out = jax.vmap(one)(qh, kh, vh, seg)  # [B, H, T, D]
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def _splash_specs(q_shape, kv_shape, mesh_shape) -> tuple[PartitionSpec, PartitionSpec, PartitionSpec]:
    """(q, kv, segment_ids) PartitionSpecs: batch and heads from the rules, the rest whole."""
    qs = logical_to_spec(Q_AXES, q_shape, mesh_shape)
    ks = logical_to_spec(KV_AXES, kv_shape, mesh_shape)
    q_heads, kv_heads = qs[2], ks[2]
    if q_heads != kv_heads:  # kv heads could not be split like the query heads: replicate both
        q_heads = kv_heads = None
    return (PartitionSpec(qs[0], None, q_heads, None), PartitionSpec(ks[0], None, kv_heads, None),
            PartitionSpec(qs[0], None))


def _splash(q, k, v, segment_ids, block, interpret):
    t = q.shape[1]
    if block % 128 or block <= 0:
        raise ValueError(f"impl='splash' needs a block that is a multiple of 128; got block={block}")
    if t % block:
        raise ValueError(
            f"impl='splash' needs T to be a multiple of the kernel's block: T={t}, block={block}"
        )
    if interpret is None:
        interpret = _platform() != "tpu"

    def specs(mesh_shape):
        q_spec, kv_spec, seg_spec = _splash_specs(q.shape, k.shape, mesh_shape)
        return (q_spec, kv_spec, kv_spec, seg_spec), q_spec

    return _per_device(lambda q, k, v, s: _splash_local(q, k, v, s, block, interpret), (q, k, v, segment_ids), specs)


def _per_device(local, args: tuple, specs):
    """`local(*args)` on whole arrays without a mesh of several devices (or inside a manual
    region); with one set (`jax.set_mesh`), inside `jax.shard_map` with
    `specs(mesh_shape) -> (in_specs, out_spec)`."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or mesh.are_all_axes_manual:
        return local(*args)
    in_specs, out_spec = specs(dict(mesh.shape))
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_spec, check_vma=False)(*args)


def causal_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    impl: str = "plain",
    block: int = 128,
    interpret: bool | None = None,
) -> jax.Array:
    """Causal, segment-masked grouped-query self-attention (see the module docstring).

    q [B, T, H, D], k/v [B, T, KV, D], segment_ids [B, T] (0: padding) -> [B, T, H, D] in q.dtype.
    `block`: the query block of "blocked" and the kernel block of "splash". `interpret`: "splash"
    only; None runs the Pallas kernel in interpret mode unless the platform is a TPU.
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {IMPLEMENTATIONS}")
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"q must be [B, T, H, D] and k, v [B, T, KV, D]; got {q.shape}, {k.shape}, {v.shape}")
    b, t, h, d = q.shape
    if k.shape[0] != b or k.shape[1] != t or k.shape[3] != d or h % k.shape[2]:
        raise ValueError(
            f"k/v {k.shape} do not fit q {q.shape}: need the same B, T, D and H a multiple of KV"
        )
    if segment_ids.shape != (b, t):
        raise ValueError(f"segment_ids must be [B, T] = {(b, t)}; got {segment_ids.shape}")
    if impl == "plain":
        return _plain(q, k, v, segment_ids)
    if impl == "blocked":
        return _blocked(q, k, v, segment_ids, block)
    if impl == "xla":
        return _xla(q, k, v, segment_ids)
    if impl == "cudnn":
        return _cudnn(q, k, v, segment_ids)
    return _splash(q, k, v, segment_ids, block, interpret)


# ----------------------------------------------------------------------------- vision towers


def _plain_segments(q, k, v, segment_ids):
    out = attend(q[None], k[None], v[None], segment_mask(segment_ids[None]))[0]
    return jnp.where((segment_ids > 0)[:, None, None], out, jnp.zeros((), out.dtype))


def _key_runs(q_segments: jax.Array, k_segments: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """For each block of `block` queries: the first key block and how many consecutive key blocks
    from there reach the last one whose range of non-zero segment ids overlaps the query block's
    (0: none, e.g. an all-padding block). Swap the arguments for the query blocks of each key block."""

    def bounds(segments):
        s = segments.reshape(-1, block)
        return jnp.where(s > 0, s, jnp.iinfo(jnp.int32).max).min(axis=1), s.max(axis=1)  # all padding: lo > hi

    q_lo, q_hi = bounds(q_segments)
    k_lo, k_hi = bounds(k_segments)
    overlap = (q_lo[:, None] <= k_hi[None, :]) & (k_lo[None, :] <= q_hi[:, None])  # [query blocks, key blocks]
    first = jnp.argmax(overlap, axis=1)
    last = overlap.shape[1] - 1 - jnp.argmax(overlap[:, ::-1], axis=1)
    return first, jnp.where(overlap.any(axis=1), last - first + 1, 0)


def _block(x: jax.Array, i: jax.Array, block: int) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(x, i * block, block, axis=0)


def _block_scores(q, k, q_seg, k_seg):
    """Scaled fp32 scores [H, q block, k block], -inf where the two patches share no non-zero segment."""
    scores = jnp.einsum("qhd,khd->hqk", q, k, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
    same = (q_seg[:, None] == k_seg[None, :]) & (k_seg[None, :] > 0)
    return jnp.where(same[None], scores, -jnp.inf)


def _flash_forward(q, k, v, q_seg, k_seg, block):
    """(out [Pq, H, D] in q.dtype, log-sum-exp [Pq / block, H, block] fp32; 0 at padding queries)."""
    h, d = q.shape[1], q.shape[2]
    first, count = _key_runs(q_seg, k_seg, block)

    def query_block(i):
        qi, si = _block(q, i, block), _block(q_seg, i, block)

        def visit(j, carry):
            top, total, acc = carry  # [H, block], [H, block], [block, H, D] (fp32)
            scores = _block_scores(qi, _block(k, j, block), si, _block(k_seg, j, block))
            new_top = jnp.maximum(top, scores.max(axis=-1))
            shift = jnp.where(jnp.isfinite(new_top), new_top, 0.0)  # rows with nothing seen yet
            p = jnp.exp(scores - shift[..., None])
            scale = jnp.exp(top - shift)
            acc = acc * scale.T[..., None] + jnp.einsum("hqk,khd->qhd", p.astype(v.dtype), _block(v, j, block),
                                                         preferred_element_type=jnp.float32)
            return new_top, total * scale + p.sum(axis=-1), acc

        init = (jnp.full((h, block), -jnp.inf, jnp.float32), jnp.zeros((h, block), jnp.float32),
                jnp.zeros((block, h, d), jnp.float32))
        top, total, acc = jax.lax.fori_loop(first[i], first[i] + count[i], visit, init)
        seen = total > 0  # False at padding queries
        out = acc / jnp.where(seen, total, 1.0).T[..., None]
        return out.astype(q.dtype), jnp.where(seen, top + jnp.log(jnp.where(seen, total, 1.0)), 0.0)

    out, lse = jax.lax.map(query_block, jnp.arange(q.shape[0] // block))
    return out.reshape(q.shape), lse


def _flash_backward(q, k, v, q_seg, k_seg, out, lse, dout, block):
    """(dq, dk, dv): one pass over the key blocks, each over the query blocks that can see it,
    with each block's probabilities recomputed from the log-sum-exp."""
    delta = jnp.einsum("qhd,qhd->qh", dout.astype(jnp.float32), out.astype(jnp.float32))  # [Pq, H]
    first, count = _key_runs(k_seg, q_seg, block)

    def key_block(dq, j):
        kj, vj, sj = _block(k, j, block), _block(v, j, block), _block(k_seg, j, block)

        def visit(i, carry):
            dq, dk, dv = carry
            qi, doi = _block(q, i, block), _block(dout, i, block)
            p = jnp.exp(_block_scores(qi, kj, _block(q_seg, i, block), sj) - lse[i][..., None])  # [H, bq, bk]
            dv = dv + jnp.einsum("hqk,qhd->khd", p.astype(dout.dtype), doi, preferred_element_type=jnp.float32)
            dp = jnp.einsum("qhd,khd->hqk", doi, vj, preferred_element_type=jnp.float32)
            ds = p * (dp - _block(delta, i, block).T[..., None]) * (q.shape[-1] ** -0.5)
            dk = dk + jnp.einsum("hqk,qhd->khd", ds.astype(q.dtype), qi, preferred_element_type=jnp.float32)
            dqi = jnp.einsum("hqk,khd->qhd", ds.astype(k.dtype), kj, preferred_element_type=jnp.float32)
            return jax.lax.dynamic_update_slice_in_dim(dq, _block(dq, i, block) + dqi, i * block, axis=0), dk, dv

        zeros = jnp.zeros(kj.shape, jnp.float32)
        dq, dk, dv = jax.lax.fori_loop(first[j], first[j] + count[j], visit, (dq, zeros, zeros))
        return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros(q.shape, jnp.float32), jnp.arange(k.shape[0] // block))
    return dq.astype(q.dtype), dk.reshape(k.shape).astype(k.dtype), dv.reshape(v.shape).astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_seg, k_seg, block):
    return _flash_forward(q, k, v, q_seg, k_seg, block)[0]


def _flash_fwd(q, k, v, q_seg, k_seg, block):
    out, lse = _flash_forward(q, k, v, q_seg, k_seg, block)
    return out, (q, k, v, q_seg, k_seg, out, lse)


def _flash_bwd(block, res, dout):
    q, k, v, q_seg, k_seg, out, lse = res
    return (*_flash_backward(q, k, v, q_seg, k_seg, out, lse, dout, block), None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _blocked_segments(q, k, v, q_seg, k_seg, block):
    """Flash attention of local queries q [Pq, H, D] (segments q_seg) over keys k, v [Pk, H, D]
    (segments k_seg), each padded with segment 0 to a multiple of `block`."""
    pq, pk = q.shape[0], k.shape[0]
    block = min(block, max(pq, pk))

    def padded(x, n):
        extra = -n % block
        return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1)) if extra else x

    out = _flash(padded(q, pq), padded(k, pk), padded(v, pk), padded(q_seg, pq), padded(k_seg, pk), block)
    return out[:pq]


def segment_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    impl: str = "plain",
    block: int = 512,
) -> jax.Array:
    """Bidirectional attention among the patches of one segment (see the module docstring).

    q, k, v [P, H, D], segment_ids [P] (0: padding, output 0) -> [P, H, D] in q.dtype. `block`:
    the query and key block of "blocked".
    """
    if impl not in SEGMENT_IMPLEMENTATIONS:
        raise ValueError(f"unknown segment attention impl {impl!r}; expected one of {SEGMENT_IMPLEMENTATIONS}")
    if q.ndim != 3 or q.shape != k.shape or k.shape != v.shape:
        raise ValueError(f"q, k and v must all be [P, H, D]; got {q.shape}, {k.shape}, {v.shape}")
    if segment_ids.shape != q.shape[:1]:
        raise ValueError(f"segment_ids must be [P] = {q.shape[:1]}; got {segment_ids.shape}")
    if impl == "plain":
        return _plain_segments(q, k, v, segment_ids)
    if block <= 0:
        raise ValueError(f"impl='blocked' needs a positive block; got block={block}")
    segment_ids = segment_ids.astype(jnp.int32)

    def specs(mesh_shape):
        q_spec = logical_to_spec(PATCH_AXES, q.shape, mesh_shape)
        kv_spec = PartitionSpec(None, q_spec[1], None)  # keys and values whole along the patches
        return (q_spec, kv_spec, kv_spec, PartitionSpec(q_spec[0]), PartitionSpec(None)), q_spec

    return _per_device(lambda q, k, v, qs, ks: _blocked_segments(q, k, v, qs, ks, block),
                       (q, k, v, segment_ids, segment_ids), specs)
