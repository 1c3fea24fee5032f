# The two set-up commands of the README: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install run test bench clean chromium

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m gsjax.train --config=configs/grpo.py

test: install chromium
	$(PY) -m pytest -q

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
