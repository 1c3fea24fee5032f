import os
import sys
from pathlib import Path

# The suite is a CPU job: with the tpu extra (libtpu) installed, jax would otherwise try the TPU first
# and print its initialisation errors at every start. Set before anything imports jax; an explicit
# JAX_PLATFORMS (even empty: let jax choose) wins.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, str(Path(__file__).parent))

# The longest files first (by their time under `make test`): with `-n 2 --dist loadfile` a file runs
# whole on one worker, and test_multihost.py alone is about half of one worker's share (13-14 of
# 26-28 min), so it must not be the last file to start. Both cores are busy throughout either way
# (98% measured), so this bounds the tail, not the total.
LONGEST_FIRST = ("test_multihost.py", "test_plan.py", "test_train_vl.py", "test_learner_vision.py", "test_train.py",
                 "test_qwen_image_mesh.py", "test_learner.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
