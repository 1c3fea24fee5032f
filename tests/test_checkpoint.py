"""Checkpoints: resuming from step k continues exactly as the uninterrupted run."""

import numpy as np
import pytest
from flax import nnx

from gsjax.checkpoint import Checkpointer
from gsjax.models.qwen3 import Qwen3, tiny_config
from gsjax.sft.data import Encoded, batches
from gsjax.sft.trainer import SFTConfig, SFTTrainer


def _data():
    rs = np.random.RandomState(0)
    return [Encoded(rs.randint(0, 64, n).tolist(), [0] * 3 + [1] * (n - 3)) for n in rs.randint(8, 30, 40)]


def _trainer():
    return SFTTrainer(Qwen3(tiny_config(vocab_size=64), rngs=nnx.Rngs(0)), SFTConfig(steps=10, lr=1e-2))


def test_resume_continues_with_identical_losses(tmp_path):
    encoded = _data()
    full = _trainer()
    data = batches(encoded, row_len=64, rows_per_batch=2, seed=0)
    losses = []
    with Checkpointer(tmp_path / "ckpt", keep=2) as ckpt:
        for step in range(1, 11):
            losses.append(full.train_step(next(data)))
            if step in (3, 5):
                ckpt.save(step, {"params": full.params, "opt": full.opt_state}, {"step": step, "batches_seen": step})
        ckpt.wait()

    resumed = _trainer()  # a fresh process would start like this
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.latest_step() == 5
        state, record = ckpt.restore({"params": resumed.params, "opt": resumed.opt_state})
    resumed.params, resumed.opt_state = state["params"], state["opt"]
    data = batches(encoded, row_len=64, rows_per_batch=2, seed=0)
    for _ in range(record["batches_seen"]):  # the same data order, from where the run stopped
        next(data)
    again = [resumed.train_step(next(data)) for _ in range(5)]
    np.testing.assert_allclose(again, losses[5:], rtol=1e-6)


def test_restore_without_checkpoint_names_the_folder(tmp_path):
    with Checkpointer(tmp_path / "empty") as ckpt, pytest.raises(FileNotFoundError, match="empty"):
        ckpt.restore({"x": np.zeros(2)})
