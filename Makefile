# The two set-up commands of the README: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install run test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m gsjax.train --config=configs/grpo.py

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m gsjax.bench.sampler
	$(PY) -m gsjax.bench.train_step
	$(PY) -m gsjax.bench.tools
	$(PY) -m gsjax.bench.rewards
	$(PY) -m gsjax.bench.diffusion
	$(PY) -m gsjax.bench.rollout

clean:
	rm -rf $(VENV) .pytest_cache
