import os
import sys
from pathlib import Path

# The suite is a CPU job: with the tpu extra (libtpu) installed, jax would otherwise try the TPU first
# and print its initialisation errors at every start. Set before anything imports jax; an explicit
# JAX_PLATFORMS (even empty: let jax choose) wins.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, str(Path(__file__).parent))
