# beads-runner: `make demo` (the whole flow, offline) and `make test` (the whole suite) each set up
# what they need on a fresh machine: a virtualenv with the package, and the pinned OpenCode CLI.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= $(CURDIR)/.demo

.PHONY: setup demo test bench lint clean

setup: $(VENV)/.installed node_modules/.bin/opencode

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "beads-runner needs Python >= 3.11 (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

# The OpenCode CLI, pinned in package.json/package-lock.json; the runner finds it here when no
# `opencode` is on PATH and agent.command is unset. `npm install`, not `npm ci`: npm 11 writes a lock
# with only this platform's optional opencode-<os>-<cpu> packages and then its own `npm ci` rejects
# that lock as out of sync; `npm install` installs exactly the locked versions and leaves it as is.
node_modules/.bin/opencode: package.json package-lock.json
	npm install --no-fund --no-audit --loglevel=error
	@test -x $@ && $@ --version >/dev/null
	@touch $@

demo: setup
	$(VENV)/bin/beads-runner demo "$(DEMO_DIR)"

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m bench.run

lint: setup
	$(VENV)/bin/ruff check beads_runner workflows quality_gates tests bench

clean:
	rm -rf $(VENV) node_modules .demo .pytest_cache
