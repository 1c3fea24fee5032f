"""A jitted KV-cache sampler with slots, for multi-turn agent loops.

Each of the `num_slots` rows of the KV cache holds one conversation. A slot's state is its length
(tokens already in the cache) and one pending token (the last token given or sampled, not yet fed
through the model). Feeding the pending token is the first thing a decode step does, so a prefill
only has to write keys and values and never computes logits.

- `start(slot, ids)` begins a new conversation in a slot; `append(slot, ids)` adds tokens (a tool
  observation) after what the slot already holds, without re-encoding it.
- `step()` prefills every queued insert (batched and bucketed), then decodes one chunk of steps for
  all running slots in one `lax.scan`, and returns the turns that ended in it.
- A turn ends on a stop token (checked on the device), a stop string (checked on the host once per
  chunk, only for rows whose new tokens could complete one), its token budget, or a full cache.

Shapes are bucketed: prefill compiles once per (rows bucket, length bucket) and decode once, so the
number of compilations stays fixed after warm-up (`compile_counts` counts traces).

Images (a `VisionLM` policy such as Qwen3-VL): `start` and `append` take the insert's images as
`Pixels` (the processor's rows and grids, in the order of the insert's image-token runs). They are
encoded once, when queued (one program per patch bucket), and the insert is prefilled from those
embeddings; its rotary positions are computed on the host (multimodal RoPE: an image takes fewer
positions than tokens), and each slot keeps the offset between the next rotary position and its
cache length, which decode adds.

On a mesh (`mesh=`), the slots and the cache are sharded over `data` x `fsdp` and the KV heads over
`tp`; the weights are placed by `SAMPLER_RULES` (sharded over `tp` only, whole on each data
shard, so a decode step gathers no weights), and both programs have explicit shardings
(`SamplerPrograms`, which the planner compiles ahead of time with abstract inputs). Host
inputs (lengths, tokens, seeds) are small and replicated. With several processes, each one
samples on its own devices (`gsjax.parallel.process_mesh`): rollouts do not wait for each other.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gsjax.models.interface import CausalLM, ModelInput, Pixels, VisionEmbeds, VisionLM
from gsjax.models.qwen3 import CACHE_AXES, KVCache, cache_shape, init_cache
from gsjax.train_state import next_pow2
from gsjax.parallel import SAMPLER_RULES, localize, logical_to_spec, state_shardings, use_rules
from gsjax.sampling.logits import SamplingParams, sample, token_logprob


PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512)  # tokens per row of one prefill call (longer inserts are chunked)


class FinishReason(str, enum.Enum):
    STOP_TOKEN = "stop_token"
    STOP_STRING = "stop_string"
    LENGTH = "length"  # the turn's token budget
    CACHE_FULL = "cache_full"  # the conversation no longer fits in the slot


@dataclasses.dataclass
class Turn:
    """One finished turn of one slot: the sampled tokens and their log-probabilities."""

    slot: int
    tokens: list[int]
    logprobs: list[float]  # under the policy's distribution at the temperature (what the learner recomputes)
    finish: FinishReason
    stop: str | int | None = None  # the stop string or stop token that ended it
    # Under the distribution each token was drawn from (after top-k / top-p; 0 for a forced or greedy token).
    behavior_logprobs: list[float] = dataclasses.field(default_factory=list)


def _buckets_up_to(limit: int) -> tuple[int, ...]:
    sizes, n = [], 1
    while n < limit:
        sizes.append(n)
        n *= 2
    return tuple(sizes) + (limit,)


def _bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


@dataclasses.dataclass
class _Insert:
    """Tokens waiting for prefill, with their rotary positions and, when they hold images, the
    images' embeddings (on the device) and each token's row in them."""

    tokens: list[int]
    positions: np.ndarray  # [T] or [3, T]
    vision: VisionEmbeds | None = None  # token_index [T]

    def cut(self, n: int) -> tuple[_Insert, _Insert]:
        """The first n tokens and the rest."""
        def part(sl):
            v = self.vision
            return _Insert(self.tokens[sl], self.positions[..., sl],
                           None if v is None else v._replace(token_index=v.token_index[sl]))
        return part(slice(None, n)), part(slice(n, None))


@dataclasses.dataclass
class _Slot:
    length: int = 0  # tokens in the cache
    offset: int = 0  # rotary position of the next token minus its cache index (<= 0 after images)
    pending: int | None = None  # token to feed next
    running: bool = False
    budget: int = 0
    seed: int = 0  # with the position, decides every draw of this conversation
    forced: list[int] = dataclasses.field(default_factory=list)  # tokens this turn emits instead of drawing
    queued: list[int] = dataclasses.field(default_factory=list)  # tokens waiting for prefill
    insert: _Insert | None = None  # the queued tokens (after pending) with positions and images
    out_tokens: list[int] = dataclasses.field(default_factory=list)
    out_logprobs: list[float] = dataclasses.field(default_factory=list)
    out_behavior: list[float] = dataclasses.field(default_factory=list)

    def turn(self, slot: int, finish: FinishReason, stop: str | int | None = None) -> Turn:
        return Turn(slot, self.out_tokens, self.out_logprobs, finish, stop, self.out_behavior)


class Sampler:
    def __init__(
        self,
        model: CausalLM,
        *,
        num_slots: int,
        cache_len: int,
        params: SamplingParams = SamplingParams(),
        stop_token_ids: Sequence[int] = (),
        stop_strings: Sequence[str] = (),
        decode: Callable[[list[int]], str] | None = None,
        prefill_buckets: Sequence[int] = PREFILL_BUCKETS,
        chunk: int = 16,
        seed: int = 0,
        mesh: jax.sharding.Mesh | None = None,
    ):
        if stop_strings and decode is None:
            raise ValueError("stop_strings need a `decode` function (token ids -> text)")
        self.cfg = model.cfg
        self.vl_cfg = model.vl_cfg if isinstance(model, VisionLM) else None
        self.num_slots = num_slots
        self.cache_len = cache_len  # the longest conversation a slot holds (prompt + all turns)
        self.params = params
        self.chunk = chunk
        self.prefill_buckets = tuple(sorted(prefill_buckets))
        self.row_buckets = _buckets_up_to(num_slots)
        self.stop_token_ids = tuple(int(t) for t in stop_token_ids)
        self.stop_strings = tuple(stop_strings)
        self._decode_text = decode
        self._stop_string_candidates = self._candidate_ids() if stop_strings else None
        self.compile_counts: collections.Counter[str] = collections.Counter()

        self.mesh = mesh if mesh is not None else Mesh(np.asarray(jax.local_devices()[:1]).reshape(1, 1, 1),
                                                       ("data", "fsdp", "tp"))
        graphdef, state = nnx.split(model)
        self.programs = SamplerPrograms(graphdef, state, self.mesh, params=params, stop_token_ids=self.stop_token_ids,
                                        num_slots=num_slots, cache_len=cache_len, chunk=chunk,
                                        counts=self.compile_counts)
        self._weights = self.programs.place_weights(state)
        self._cache: KVCache = self.programs.init_cache()
        self._key = jax.random.key(seed)
        self._seeds = np.random.default_rng(seed)  # conversation seeds when start() is given none
        self._slots = [_Slot() for _ in range(num_slots)]
        self._prefill_fn = self.programs.prefill
        self._decode_fn = self.programs.decode

    # ------------------------------------------------------------------ public API

    def update_weights(self, model: CausalLM) -> None:
        """Sample from `model`'s current parameters from now on (after a training step): a copy
        placed for sampling (every process takes part when the model spans several); a released
        KV cache is made again."""
        self._weights = self.programs.place_weights(nnx.state(model))
        if self._cache is None:
            self._cache = self.programs.init_cache()

    def release(self) -> None:
        """Let go of the weights copy and the KV cache (between rollouts, so the learner's update has
        their memory); `update_weights` places them again. Every slot is emptied."""
        if any(s.running for s in self._slots):
            raise RuntimeError("release() while turns are decoding; release between rollouts")
        self._weights = self._cache = None
        self._slots = [_Slot() for _ in range(self.num_slots)]

    def start(self, slot: int, ids: Sequence[int], max_new_tokens: int, seed: int | None = None,
              forced: Sequence[int] = (), images: Pixels | None = None) -> None:
        """Begin a new conversation in `slot` with prompt `ids`, then generate one turn.

        Each token is drawn with a key made from the sampler's seed, the conversation's `seed` and
        the token's position, so a conversation samples the same tokens whatever slot it is in,
        whatever else is decoding and whenever its tool results come back.

        `forced` (teacher forcing): the turn emits these tokens, in order, instead of drawing
        (each with its log-probability under the model), then draws as usual; the compute is the
        same as sampling. Replays of known trajectories use it.

        `images`: the pixels of the prompt's image-token runs, in order (a `VisionLM` policy only).
        """
        if not ids:
            raise ValueError("start() needs at least one prompt token")
        if seed is None:
            seed = int(self._seeds.integers(2**31))
        self._slots[slot] = _Slot(seed=int(seed) % 2**31)
        self._queue(slot, ids, max_new_tokens, forced, images)

    def append(self, slot: int, ids: Sequence[int], max_new_tokens: int, forced: Sequence[int] = (),
               images: Pixels | None = None) -> None:
        """Add `ids` after what `slot` holds (the last turn included), then generate one turn
        (`forced` and `images` as in `start`)."""
        s = self._slots[slot]
        if s.running:
            raise ValueError(f"slot {slot} is still generating; append after its turn ends")
        if s.pending is None and not s.queued and not ids:
            raise ValueError(f"slot {slot} is empty; use start()")
        self._queue(slot, ids, max_new_tokens, forced, images)

    def free(self, slot: int) -> None:
        self._slots[slot] = _Slot()

    def slot_length(self, slot: int) -> int:
        """Tokens of the slot's conversation so far (cached + pending)."""
        s = self._slots[slot]
        return s.length + (s.pending is not None) + len(s.queued)

    def drawn(self, slot: int) -> list[int]:
        """The tokens the slot's current (or last) turn has drawn so far: a running turn's partial
        output, read between steps (streaming)."""
        return list(self._slots[slot].out_tokens)

    @property
    def busy(self) -> bool:
        return any(s.running for s in self._slots)

    @property
    def released(self) -> bool:
        """Whether `release` let go of the weights copy and the cache (until `update_weights`)."""
        return self._weights is None

    def free_slots(self) -> list[int]:
        return [i for i, s in enumerate(self._slots) if not s.running]

    def step(self) -> list[Turn]:
        """Prefill queued inserts, decode one chunk, return the turns that ended."""
        if self._weights is None:
            raise RuntimeError("the sampler was released; update_weights(model) places its weights again")
        finished = self._prefill_queued()
        if any(s.running for s in self._slots):
            finished += self._decode_chunk()
        return finished

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[Turn]:
        """One turn for each prompt, using the slots as a batch; results in prompt order."""
        results: dict[int, Turn] = {}
        todo = collections.deque(enumerate(prompts))
        owner: dict[int, int] = {}
        while todo or len(results) < len(prompts):
            for slot in self.free_slots():
                if not todo:
                    break
                idx, prompt = todo.popleft()
                owner[slot] = idx
                self.start(slot, prompt, max_new_tokens)
            for turn in self.step():
                results[owner[turn.slot]] = turn
        return [results[i] for i in range(len(prompts))]

    # ------------------------------------------------------------------ prefill

    def _queue(self, slot: int, ids: Sequence[int], max_new_tokens: int, forced: Sequence[int] = (),
               images: Pixels | None = None) -> None:
        s = self._slots[slot]
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        s.queued.extend(int(i) for i in ids)
        seq = ([s.pending] if s.pending is not None else []) + s.queued
        s.insert = self._insert(slot, seq, images)
        s.budget = max_new_tokens
        s.running = True
        s.out_tokens, s.out_logprobs, s.out_behavior = [], [], []
        s.forced = [int(t) for t in forced]

    def _insert(self, slot: int, seq: list[int], images: Pixels | None) -> _Insert:
        """`seq` (the pending token and the queued ones) with its rotary positions from the slot's
        next position, its images encoded; the slot's offset moves past them."""
        s = self._slots[slot]
        start = s.length + s.offset
        cfg = self.vl_cfg
        if cfg is None:
            if images is not None:
                raise ValueError("this policy is text-only: it cannot be shown images (load a Qwen3-VL policy)")
            return _Insert(seq, start + np.arange(len(seq)))
        from gsjax.models.qwen3_vl import mrope_positions, vision_input

        grids = np.zeros((0, 3), np.int64) if images is None else np.asarray(images.grids).reshape(-1, 3)
        rel, _ = mrope_positions(seq, grids, cfg)
        if seq and seq[-1] == cfg.image_token_id:
            raise ValueError("an insert must not end inside an image (its last token is fed by decode)")
        s.offset = int(start + rel.max(initial=-1) + 1) - (s.length + len(seq))
        if images is None:
            return _Insert(seq, start + rel)
        merge = cfg.vision.spatial_merge_size ** 2
        total = int(np.prod(grids, axis=-1).sum())
        inputs = vision_input(np.asarray(seq)[None], images.values, grids, cfg, pad_to=next_pow2(max(total, merge)))
        embeds, deepstack = self.programs.encode(self._weights, inputs.patches, inputs.layout)
        return _Insert(seq, start + rel, VisionEmbeds(embeds, deepstack, np.asarray(inputs.token_index)[0]))

    def _prefill_queued(self) -> list[Turn]:
        """Write queued tokens (after each slot's pending token) into the cache, in buckets; rows
        with images one at a time, from their encoded images."""
        finished: list[Turn] = []
        writes: dict[int, _Insert] = {}
        for i, s in enumerate(self._slots):
            if not s.queued:
                continue
            insert, s.insert = s.insert, None
            seq = insert.tokens
            s.queued = []
            if s.length + len(seq) + 1 > self.cache_len:  # no room for even one sampled token
                s.running = False
                finished.append(Turn(i, [], [], FinishReason.CACHE_FULL))
                s.pending = seq[-1]
                continue
            s.pending = seq[-1]
            if len(seq) > 1:
                writes[i] = insert.cut(len(seq) - 1)[0]
        longest = self.prefill_buckets[-1]
        while writes:  # chunked: at most `longest` tokens per row per call
            with_images = [r for r in sorted(writes) if writes[r].vision is not None]
            rows = with_images[:1] or sorted(writes)
            pieces = {}
            for r in rows:
                pieces[r], rest = writes[r].cut(longest)
                if rest.tokens:
                    writes[r] = rest
                else:
                    del writes[r]
            self._prefill_rows(pieces)
        return finished

    def _prefill_rows(self, pieces: dict[int, _Insert]) -> None:
        rows = sorted(pieces)
        length = _bucket(max(len(p.tokens) for p in pieces.values()), self.prefill_buckets)
        n = _bucket(len(rows), self.row_buckets)
        tokens = np.zeros((n, length), np.int32)
        starts = np.zeros((n,), np.int32)
        row_ids = np.full((n,), self.num_slots, np.int32)  # out of range = padding row
        rope = (3,) if self.cfg.mrope_section else ()
        positions = np.zeros(rope + (n, length), np.int32)
        for j, r in enumerate(rows):
            k = len(pieces[r].tokens)
            tokens[j, :k] = pieces[r].tokens
            positions[..., j, :k] = np.broadcast_to(pieces[r].positions, rope + (k,))
            starts[j] = self._slots[r].length
            row_ids[j] = r
        vision = pieces[rows[0]].vision
        if vision is None:
            self._cache = self._prefill_fn(self._weights, self._cache, row_ids, tokens, starts, positions)
        else:
            index = np.full((n, length), -1, np.int32)
            index[0, :len(vision.token_index)] = vision.token_index
            self._cache = self.programs.prefill_vision(self._weights, self._cache, row_ids, tokens, starts, positions,
                                                       vision.embeds, vision.deepstack, index)
        for r in rows:
            self._slots[r].length += len(pieces[r].tokens)

    # ------------------------------------------------------------------ decode

    def _decode_chunk(self) -> list[Turn]:
        slots = self._slots
        lengths = np.array([s.length for s in slots], np.int32)
        pending = np.array([s.pending if s.pending is not None else 0 for s in slots], np.int32)
        running = np.array([s.running for s in slots], bool)
        # How many more tokens each row may sample in this turn (budget and cache room).
        room = np.array(
            [min(s.budget - len(s.out_tokens), self.cache_len - 1 - s.length) if s.running else 0 for s in slots],
            np.int32,
        )
        seeds = np.array([s.seed for s in slots], np.int32)
        offsets = np.array([s.offset for s in slots], np.int32)
        forced = np.full((self.chunk, len(slots)), -1, np.int32)
        for i, s in enumerate(slots):
            if s.running and s.forced:
                head = s.forced[: self.chunk]
                forced[: len(head), i] = head
        self._cache, out = self._decode_fn(self._weights, self._cache, lengths, offsets, pending, running, room, seeds,
                                           forced, self._key)
        tokens, logprobs, behavior, emitted, stopped, new_lengths = jax.device_get(out)

        finished: list[Turn] = []
        for i in np.flatnonzero(running):
            s = slots[i]
            n = int(emitted[:, i].sum())
            new = tokens[:n, i].tolist()
            before = len(s.out_tokens)
            s.out_tokens += new
            s.forced = s.forced[n:]
            s.out_logprobs += logprobs[:n, i].tolist()
            s.out_behavior += behavior[:n, i].tolist()
            s.length = int(new_lengths[i])
            if n:
                s.pending = new[-1]
            turn = None
            if self.stop_strings and self._stop_string_candidates[new].any():
                turn = self._cut_at_stop_string(i, before)
            if turn is None and stopped[i]:
                turn = s.turn(i, FinishReason.STOP_TOKEN, s.out_tokens[-1])
            if turn is None and len(s.out_tokens) >= s.budget:
                turn = s.turn(i, FinishReason.LENGTH)
            if turn is None and s.length + 1 >= self.cache_len:
                turn = s.turn(i, FinishReason.CACHE_FULL)
            if turn is not None:
                s.running = False
                finished.append(turn)
        return finished

    # ------------------------------------------------------------------ stop strings

    def _candidate_ids(self) -> np.ndarray:
        """Tokens whose text contains the last character of some stop string."""
        ends = {s[-1] for s in self.stop_strings}
        vocab = self.cfg.vocab_size
        texts = [self._decode_text([i]) for i in range(vocab)]
        return np.array([any(c in t for c in ends) for t in texts], bool)

    def _cut_at_stop_string(self, slot: int, checked: int) -> Turn | None:
        """End the turn at the first stop string, if one was completed after token `checked`
        (earlier tokens were checked in earlier chunks)."""
        s = self._slots[slot]
        text = self._decode_text(s.out_tokens)
        hits = [(text.find(stop), stop) for stop in self.stop_strings if stop in text]
        if not hits:
            return None
        _, stop = min(hits)
        # The shortest prefix of tokens whose text contains the stop string.
        keep = next(j for j in range(checked + 1, len(s.out_tokens) + 1) if stop in self._decode_text(s.out_tokens[:j]))
        dropped = len(s.out_tokens) - keep
        s.out_tokens, s.out_logprobs, s.out_behavior = s.out_tokens[:keep], s.out_logprobs[:keep], s.out_behavior[:keep]
        s.length -= dropped  # cache entries past the new length are simply ignored
        s.pending = s.out_tokens[-1]
        return s.turn(slot, FinishReason.STOP_STRING, stop)




class SamplerPrograms:
    """The sampler's two jitted programs for one model, mesh and slot layout, with explicit
    shardings:

    - `prefill(weights, cache, row_ids [R], tokens [R, T], starts [R], positions [R, T] or
      [3, R, T]) -> cache` writes queued tokens of R rows (slot ids; `num_slots` marks a padding
      row) into their slots at cache entries starts + 0..T-1, rotated by `positions`;
    - `decode(weights, cache, lengths, offsets, pending, running, room, seeds [N], forced
      [chunk, N], key) -> (cache, (tokens, logprobs, behavior_logprobs, emitted, stopped, lengths))` feeds each slot's
      pending token and draws `chunk` more in one `lax.scan` (rotary position = length + offset);
    - for a `VisionLM`: `encode(weights, patches, layout) -> (embeds, deepstack)` and
      `prefill_vision(..., positions, embeds, deepstack, token_index [R, T])`.

    The cache is donated to both. `abstract_*` give the inputs as ShapeDtypeStructs with their
    shardings, for ahead-of-time compilation (`gsjax.plan`).
    """

    def __init__(self, graphdef, state, mesh: Mesh, *, params: SamplingParams, stop_token_ids: Sequence[int],
                 num_slots: int, cache_len: int, chunk: int, counts: collections.Counter | None = None):
        model = nnx.merge(graphdef, state)
        self.graphdef, self.mesh, self.cfg = graphdef, mesh, model.cfg
        self.vl_cfg = model.vl_cfg if isinstance(model, VisionLM) else None
        self.params, self.stop_token_ids = params, tuple(stop_token_ids) or (-1,)
        self.num_slots, self.cache_len, self.chunk = num_slots, cache_len, chunk
        self.counts = collections.Counter() if counts is None else counts
        self._init_cache = None
        batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
        if num_slots % batch_shards:
            raise ValueError(f"num_slots={num_slots} does not divide over the mesh's data x fsdp = {batch_shards} "
                             "devices: the KV cache would be replicated on each; use a multiple of it")
        with use_rules(SAMPLER_RULES):
            self.weight_shardings = state_shardings(state, mesh)
            spec = logical_to_spec(CACHE_AXES, cache_shape(self.cfg, num_slots, cache_len), dict(mesh.shape))
        # The sampler computes in cfg.dtype; float32 master weights are held in it (half the bytes).
        self.weight_dtype = self.cfg.jnp_dtype
        self.cache_sharding = KVCache(NamedSharding(mesh, spec), NamedSharding(mesh, spec))
        rep = NamedSharding(mesh, PartitionSpec())
        self._rep = rep
        self.jitted_prefill = jax.jit(self._prefill, donate_argnums=(1,),
                                      in_shardings=(self.weight_shardings, self.cache_sharding) + (rep,) * 4,
                                      out_shardings=self.cache_sharding)
        self.jitted_decode = jax.jit(self._decode, donate_argnums=(1,),
                                     in_shardings=(self.weight_shardings, self.cache_sharding) + (rep,) * 8,
                                     out_shardings=(self.cache_sharding, rep))
        # Images: small next to the cache, replicated.
        self.jitted_encode = jax.jit(self._encode, out_shardings=(rep, rep))
        self.jitted_prefill_vision = jax.jit(self._prefill_vision, donate_argnums=(1,),
                                             in_shardings=(self.weight_shardings, self.cache_sharding) + (rep,) * 7,
                                             out_shardings=self.cache_sharding)

    @contextlib.contextmanager
    def context(self):
        """The mesh and rules the programs are traced (and lowered) under."""
        with use_rules(SAMPLER_RULES), jax.set_mesh(self.mesh):
            yield

    def prefill(self, *args):
        with self.context():
            return self.jitted_prefill(*args)

    def decode(self, *args):
        with self.context():
            return self.jitted_decode(*args)

    def encode(self, *args):
        with self.context():
            return self.jitted_encode(*args)

    def prefill_vision(self, *args):
        with self.context():
            return self.jitted_prefill_vision(*args)

    def place_weights(self, state) -> nnx.State:
        """`state` (the learner's parameters, on any mesh of this run) copied into the sampler's
        placement: resharded on device, then, with several processes, taken from this process's
        devices."""
        cast = jax.tree.map(self._cast, state)
        leaves = jax.tree.leaves(state)
        if all(x.is_fully_addressable for x in leaves):
            mine = {d for s in jax.tree.leaves(self.weight_shardings) for d in s.device_set}
            if all(x.sharding.device_set == mine for x in leaves):  # resharded and cast on device
                return jax.jit(lambda x: x, out_shardings=self.weight_shardings)(cast)
            return jax.device_put(cast, self.weight_shardings)
        # A global array: first the sampler's placement over the whole mesh (replicated across
        # processes, as SAMPLER_RULES shard over tp only), then each process's shards of it.
        global_mesh = _mesh_of(state)
        on_global = jax.tree.map(lambda s: NamedSharding(global_mesh, s.spec), self.weight_shardings)
        moved = jax.jit(lambda x: x, out_shardings=on_global)(cast)
        return jax.tree.map(localize, moved, self.weight_shardings)

    def _cast(self, x: jax.Array) -> jax.Array:
        return x.astype(self.weight_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    def init_cache(self) -> KVCache:
        if self._init_cache is None:  # one program, made again after every release
            self._init_cache = jax.jit(lambda: init_cache(self.cfg, self.num_slots, self.cache_len),
                                       out_shardings=self.cache_sharding)
        with self.context():
            return self._init_cache()

    def _prefill(self, weights, cache: KVCache, row_ids, tokens, starts, positions) -> KVCache:
        self.counts[f"prefill[{tokens.shape[0]}x{tokens.shape[1]}]"] += 1
        model = nnx.merge(self.graphdef, weights)
        _, cache = model.forward_cached(ModelInput(tokens, positions), cache, starts, rows=row_ids)
        return cache

    def _encode(self, weights, patches, layout):
        self.counts[f"encode[{patches.shape[0]}]"] += 1
        return nnx.merge(self.graphdef, weights).encode_images(patches, layout)

    def _prefill_vision(self, weights, cache: KVCache, row_ids, tokens, starts, positions, embeds, deepstack,
                        token_index) -> KVCache:
        self.counts[f"prefill_vision[{tokens.shape[0]}x{tokens.shape[1]},{embeds.shape[0]}]"] += 1
        model = nnx.merge(self.graphdef, weights)
        inputs = ModelInput(tokens, positions, None, VisionEmbeds(embeds, deepstack, token_index))
        _, cache = model.forward_cached(inputs, cache, starts, rows=row_ids)
        return cache

    def _decode(self, weights, cache, lengths, offsets, pending, running, room, seeds, forced, key):
        self.counts["decode"] += 1
        model = nnx.merge(self.graphdef, weights)
        stop_ids = jnp.asarray(self.stop_token_ids, jnp.int32)
        slot_keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(seeds)

        def body(carry, force):
            cache, lengths, pending, running, room = carry
            positions = (lengths + offsets)[:, None]
            if self.cfg.mrope_section:
                positions = jnp.broadcast_to(positions, (3,) + positions.shape)
            hidden, cache = model.forward_cached(ModelInput(pending[:, None], positions), cache, lengths)
            row_keys = jax.vmap(jax.random.fold_in)(slot_keys, lengths)  # the position being sampled
            logits = model.logits(hidden[:, 0])
            tok, lp, lpb = sample(logits, row_keys, self.params)
            tok = jnp.where(force >= 0, force, tok)
            lp = jnp.where(force >= 0, token_logprob(logits, jnp.maximum(force, 0), self.params), lp)
            lpb = jnp.where(force >= 0, 0.0, lpb)  # a forced token is certain
            emit = running
            lengths = lengths + emit
            pending = jnp.where(emit, tok, pending)
            room = room - emit
            hit_stop = emit & jnp.isin(tok, stop_ids)
            running = running & ~hit_stop & (room > 0)
            return (cache, lengths, pending, running, room), (tok, lp, lpb, emit, hit_stop)

        (cache, lengths, _, _, _), (tok, lp, lpb, emit, hit) = jax.lax.scan(
            body, (cache, lengths, pending, running, room), forced
        )
        return cache, (tok, lp, lpb, emit, hit.any(axis=0), lengths)

    # ------------------------------------------------------------------ ahead of time

    def abstract_weights(self, state) -> nnx.State:
        """`state`'s weights as the sampler holds them (dtype and sharding), without values."""
        def one(x, sharding):
            dtype = self.weight_dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype
            return jax.ShapeDtypeStruct(x.shape, dtype, sharding=sharding)

        return jax.tree.map(one, state, self.weight_shardings)

    def abstract_cache(self) -> KVCache:
        shape = cache_shape(self.cfg, self.num_slots, self.cache_len)
        return KVCache(*(jax.ShapeDtypeStruct(shape, self.cfg.jnp_dtype, sharding=s) for s in self.cache_sharding))

    def abstract_prefill_inputs(self, rows: int, length: int) -> tuple:
        i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self._rep)  # noqa: E731
        rope = (3,) if self.cfg.mrope_section else ()
        return (self.abstract_cache(), i32(rows), i32(rows, length), i32(rows), i32(*rope, rows, length))

    def abstract_encode_inputs(self, patches: int) -> tuple:
        """Abstract inputs of `encode` for a bucket of `patches` patches (a VisionLM's programs)."""
        from gsjax.models.qwen3_vl_vision import VisionLayout, vision_layout

        vision = self.vl_cfg.vision
        host = vision_layout(np.zeros((0, 3), np.int64), vision, pad_to=patches)  # shapes only
        spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self._rep)  # noqa: E731
        return (jax.ShapeDtypeStruct((patches, vision.patch_dim), jnp.float32, sharding=self._rep),
                VisionLayout(*(spec(a) for a in host[:4]), tokens_per_image=None))

    def abstract_prefill_vision_inputs(self, length: int, embeds: int) -> tuple:
        """Abstract inputs of `prefill_vision`: one row of `length` tokens, `embeds` merged image
        embeddings."""
        i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self._rep)  # noqa: E731
        e, k = self.cfg.hidden_size, len(self.vl_cfg.vision.deepstack_visual_indexes)
        dt = self.cfg.jnp_dtype
        return (self.abstract_cache(), i32(1), i32(1, length), i32(1), i32(3, 1, length),
                jax.ShapeDtypeStruct((embeds, e), dt, sharding=self._rep),
                jax.ShapeDtypeStruct((k, embeds, e), dt, sharding=self._rep), i32(1, length))

    def abstract_decode_inputs(self) -> tuple:
        n = self.num_slots
        i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self._rep)  # noqa: E731
        key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=self._rep)
        return (self.abstract_cache(), i32(n), i32(n), i32(n), jax.ShapeDtypeStruct((n,), jnp.bool_, sharding=self._rep),
                i32(n), i32(n), i32(self.chunk, n), key)


def _mesh_of(state) -> Mesh:
    """The mesh a multi-process state's arrays live on (a run's one mesh)."""
    for x in jax.tree.leaves(state):
        if isinstance(x.sharding, NamedSharding):
            return x.sharding.mesh
    raise ValueError("parameters spread over several processes must be placed on a mesh (NamedSharding)")
