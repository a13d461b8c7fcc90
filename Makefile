# beads-runner: `make demo` (the whole flow, offline) and `make test` (the whole suite) each set up
# what they need on a fresh machine: a virtualenv with the package, and the pinned OpenCode CLI.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= $(CURDIR)/.demo

.PHONY: setup demo test test-stress bench lint clean tools system-packages

setup: $(VENV)/.installed node_modules/.bin/opencode system-packages

# bubblewrap confines the agent and its gates (sandbox = "auto"). Debian's package, installed when
# missing (as root; otherwise the script prints the command to run).
system-packages:
	@tools/ensure-debian-packages bubblewrap

# --- Go tools: the real bd and a real Hatchet engine ------------------------------------------------
# Each is `go install`ed by name at the version pinned in tools/<name>/go.mod (with its go.sum), into
# .tools/bin. Go's caches stay where Go keeps them, outside the tree. Nothing built is committed.
# The pins live in go.mod files, not on the command line, because the Go module proxy here refuses
# to list these modules' versions, which `go install module@version` needs for its deprecation check.
GO ?= go
TOOLS_BIN := $(CURDIR)/.tools/bin
GO_ENV := GOTOOLCHAIN=local GOBIN=$(TOOLS_BIN) GOFLAGS=-mod=readonly
HATCHET_VERSION := $(shell awk '$$1 == "github.com/hatchet-dev/hatchet" {print $$2}' tools/hatchet/go.mod)
HATCHET_BINS := $(TOOLS_BIN)/hatchet-lite $(TOOLS_BIN)/hatchet-migrate $(TOOLS_BIN)/hatchet-admin

tools: $(TOOLS_BIN)/bd $(TOOLS_BIN)/.hatchet-$(HATCHET_VERSION)
	@tools/ensure-debian-packages postgresql

# bd v1.0.5: embedded Dolt needs cgo and gcc; gms_pure_go drops ICU (as beads' own releases do).
$(TOOLS_BIN)/bd: tools/bd/go.mod tools/bd/go.sum
	cd tools/bd && $(GO_ENV) CGO_ENABLED=1 $(GO) install -tags gms_pure_go github.com/steveyegge/beads/cmd/bd
	@touch $@

# Hatchet's engine and API in one process (hatchet-lite), its migrations and its admin tool (keys, a
# tenant, a token). The version is linked in, as Hatchet's releases do: workers ask the engine for it.
$(TOOLS_BIN)/.hatchet-$(HATCHET_VERSION): tools/hatchet/go.mod tools/hatchet/go.sum
	cd tools/hatchet && $(GO_ENV) CGO_ENABLED=0 $(GO) install -ldflags "-X main.Version=$(HATCHET_VERSION)" \
		github.com/hatchet-dev/hatchet/cmd/hatchet-lite \
		github.com/hatchet-dev/hatchet/cmd/hatchet-migrate \
		github.com/hatchet-dev/hatchet/cmd/hatchet-admin
	@rm -f $(TOOLS_BIN)/.hatchet-*
	@touch $@

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

# With Go on PATH, the real bd and Hatchet engine are built first and their tests run; without Go
# those tests skip with one line saying how to get them (in CI, CI=true, they fail instead).
# chromium is the browser the console's browser test drives (Playwright, executable_path=
# /usr/bin/chromium: no browser download); only the tests need it, not the demo.
test: setup
	@tools/ensure-debian-packages chromium
	@if command -v $(GO) >/dev/null 2>&1; then $(MAKE) --no-print-directory tools; \
	else echo "go not found: the real bd and Hatchet engine tests will skip (install Go >= 1.26, then make tools)"; fi
	$(PY) -m pytest -q

# The suite must pass without spare CPU: `make test` three times in a row while a busy loop keeps one
# core busy (pinned to CPU 0 when taskset is there). Stops at the first failing round and names it;
# the busy loop is killed (SIGKILL: it has nothing to tidy, and a TERM sent while it is still starting
# can be lost) however the run ends. It runs the venv's interpreter, a real binary: a
# wrapper such as a pyenv shim would get the kill while its interpreter ran on.
STRESS_ROUNDS ?= 3
test-stress: setup
	@busy=; trap 'if [ -n "$$busy" ]; then kill -KILL $$busy 2>/dev/null; fi' EXIT; trap 'exit 130' INT TERM; \
	if command -v taskset >/dev/null 2>&1; then taskset -c 0 $(PY) -c 'while True: pass' & busy=$$!; \
	else $(PY) -c 'while True: pass' & busy=$$!; fi; \
	round=1; while [ $$round -le $(STRESS_ROUNDS) ]; do \
		echo "test-stress: round $$round of $(STRESS_ROUNDS), one core kept busy (pid $$busy)"; \
		if ! $(MAKE) --no-print-directory test; then \
			echo "test-stress: round $$round of $(STRESS_ROUNDS) FAILED"; exit 1; fi; \
		round=$$((round + 1)); \
	done; \
	echo "test-stress: all $(STRESS_ROUNDS) rounds passed with one core busy"

bench: setup
	$(PY) -m bench.run

lint: setup
	$(VENV)/bin/ruff check beads_runner workflows quality_gates tests bench

clean:
	rm -rf $(VENV) node_modules .demo .pytest_cache .tools
