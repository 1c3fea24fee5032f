"""A tiny random Qwen3-VL and synthetic conversations with images, shared by
tests/test_learner_vision.py and its worker processes (tests/learner_vision_worker.py)."""

from __future__ import annotations

import numpy as np

from gsjax.models.qwen3 import tiny_config
from gsjax.models.qwen3_vl import Qwen3VLConfig
from gsjax.models.qwen3_vl_vision import tiny_vision_config
from gsjax.rl.trainer import Sample

# Tokenizer.train_bpe's ids of <|vision_start|>, <|vision_end|>, <|image_pad|>; video: unused.
START, END, IMAGE, VIDEO = 9, 10, 11, 319
GRIDS = ((1, 4, 4), (1, 4, 6), (1, 6, 4), (1, 2, 4))  # patch grids (t, h, w): 4 to 6 merged tokens
PATCH_DIM = 3 * 2 * 4 * 4  # tiny_vision_config: in_channels x temporal_patch_size x patch_size**2


def vl_config(**text) -> Qwen3VLConfig:
    base = dict(vocab_size=320, hidden_size=48, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16,
                mrope_section=(3, 3, 2), tie_embeddings=False)
    return Qwen3VLConfig(text=tiny_config(**{**base, **text}), vision=tiny_vision_config(out_hidden_size=48),
                         image_token_id=IMAGE, vision_start_token_id=START, vision_end_token_id=END,
                         video_token_id=VIDEO)


def conversation(rs: np.random.RandomState, grids) -> tuple[list[int], list[int], np.ndarray | None, np.ndarray | None]:
    """(tokens, loss mask, pixel rows, grids) of a prompt, then text with an image of each grid:
    the loss on the text after the first image (so the images' gradients reach the tower) and on
    the answer; never on the first token (in a packed row it is scored against the row's previous
    conversation)."""
    prompt = rs.randint(12, 300, rs.randint(2, 6)).tolist()
    tokens, mask = prompt, [0] * len(prompt)
    seen = False
    for g in grids:
        text = rs.randint(12, 300, rs.randint(3, 9)).tolist()
        tokens += text + [START] + [IMAGE] * (int(np.prod(g)) // 4) + [END]
        mask += [int(seen)] * len(text) + [0] * (int(np.prod(g)) // 4 + 2)
        seen = True
    answer = rs.randint(12, 300, rs.randint(4, 12)).tolist()
    tokens, mask = tokens + answer, mask + [1] * len(answer)
    if not grids:
        return tokens, mask, None, None
    pixels = rs.randn(sum(int(np.prod(g)) for g in grids), PATCH_DIM).astype(np.float32)
    return tokens, mask, pixels, np.asarray(grids, np.int64)


def samples(seed: int, n: int = 8, group_size: int = 4) -> list[Sample]:
    """GRPO samples with 0 to 2 images each (one failed sample), rewards varying within groups."""
    rs = np.random.RandomState(seed)
    out = []
    for i in range(n):
        grids = [GRIDS[rs.randint(len(GRIDS))] for _ in range(1 + i % 3 if i % 4 else 0)]
        tokens, mask, pixels, g = conversation(rs, grids)
        out.append(Sample(tokens, mask, (-rs.rand(len(tokens))).tolist(), mask, group=f"p{i // group_size}",
                          reward=float(rs.rand()), failed=i == 5, pixel_values=pixels, image_grids=g))
    return out
