"""The environment of the processes tests start (workers with simulated devices, `gsjax.train` runs)."""

import os

# The suite's XLA flags (set in conftest.py): the CPU backend without LLVM's optimisation passes.
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0"


def worker_env(**extra: str) -> dict[str, str]:
    """This process's environment with XLA_FLAGS only the suite's own (a device count set by the
    caller must not reach a worker that sets its own), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return env | {"XLA_FLAGS": SUITE_XLA_FLAGS} | extra
