import os
import shutil
import sys
import tempfile
from pathlib import Path

# The suite is a CPU job: with the tpu extra (libtpu) installed, jax would otherwise try the TPU first
# and print its initialisation errors at every start. Set before anything imports jax; an explicit
# JAX_PLATFORMS (even empty: let jax choose) wins.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One XLA compilation cache for the session: its workers and every subprocess a test starts (they
# inherit the environment). Many tests compile the same programs (the same tiny model's step, built
# again per test or per subprocess); a hit skips XLA's compile, and a compiled program gives the
# same results whichever process compiled it. tests/test_learner.py alone: 254 s without, 156 s
# with it from empty (this machine, the same load). Every compile is cached (no minimum time). The
# folder is the run's own: pytest's first process makes it before xdist starts the workers (which
# inherit it), and removes it at the end, so a run never reads another run's.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _XLA_CACHE = tempfile.mkdtemp(prefix="gsjax-test-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
else:
    _XLA_CACHE = None  # the caller's, or the first process's (this is a worker): not ours to remove


# XLA's CPU backend without LLVM's optimisation passes: most of the suite's time is compiling tiny
# programs (about half of it in-process, a fifth op by op), and at level 0 a compile is 25-40%
# shorter while the tiny programs run about as fast. tests/test_learner.py, test_qwen3_vl.py and
# test_sft.py together, both ways side by side on this machine: 286 s against 302 s. Numerics are
# XLA's own either way (no fast-math at any level); every parity test passes at this level.
# The multi-device workers and gsjax.train runs tests start get it too (subprocess_env.worker_env),
# except tests/test_multihost.py's: its fixture trains 300 steps, where run time counts.
sys.path.insert(0, str(Path(__file__).parent))
from subprocess_env import SUITE_XLA_FLAGS  # noqa: E402

if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SUITE_XLA_FLAGS).strip()


def pytest_unconfigure(config):
    if _XLA_CACHE is not None:
        shutil.rmtree(_XLA_CACHE, ignore_errors=True)


# The longest files first (by their time under `make test`): with `-n 2 --dist loadfile` a file runs
# whole on one worker, and test_multihost.py alone is about half of one worker's share (13-14 of
# 26-28 min), so it must not be the last file to start. Both cores are busy throughout either way
# (98% measured), so this bounds the tail, not the total.
LONGEST_FIRST = ("test_multihost.py", "test_plan.py", "test_train_vl.py", "test_learner_vision.py", "test_train.py",
                 "test_qwen_image_mesh.py", "test_learner.py", "test_notebooks.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
