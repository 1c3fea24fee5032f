# The two set-up commands of the README: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# `make run` and `make test` are CPU jobs. Once the tpu extra (libtpu) is in the venv, every jax start
# on a machine without a TPU prints libtpu's initialisation errors; JAX_PLATFORMS=cpu silences them.
# On an accelerator, let jax choose: `make run JAX_PLATFORMS=` (or JAX_PLATFORMS=tpu / cuda).
JAX_PLATFORMS ?= cpu
run test bench: export JAX_PLATFORMS := $(JAX_PLATFORMS)

.PHONY: install install-tpu run test bench clean chromium

# Each stamp is redone when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

# The tpu extra (libtpu, ~680 MB) on top: the test suite compiles ahead of time for TPU topologies
# (jax.experimental.topologies) on CPU-only machines. (TPU VM workers install .[tpu] alone: launch/tpu_vm.sh.)
$(VENV)/.installed-tpu: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e ".[test,tpu]"
	touch $@

install: $(VENV)/.installed

install-tpu: $(VENV)/.installed-tpu

run: install
	$(PY) -m gsjax.train --config=configs/grpo.py

# Two workers, one test file each at a time (module fixtures stay whole): most tests use one core.
test: install-tpu chromium
	$(PY) -m pytest -q -n 2 --dist loadfile

# The evaluation report's test renders it in headless Chromium, installed from the system packages
# when missing (Debian/Ubuntu: apt-get, with sudo unless root); without it that one test is skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ command -v apt-get >/dev/null 2>&1 && SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo) && \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
	echo "chromium could not be installed: the HTML report's screenshot test will be skipped"

bench: install
	$(PY) -m gsjax.bench.sampler
	$(PY) -m gsjax.bench.train_step
	$(PY) -m gsjax.bench.tools
	$(PY) -m gsjax.bench.rewards
	$(PY) -m gsjax.bench.diffusion
	$(PY) -m gsjax.bench.rollout

clean:
	rm -rf $(VENV) .pytest_cache
