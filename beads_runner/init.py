"""`beads-runner init`: a commented configuration, gates proposed from what the repository has."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from beads_runner import executables
from beads_runner.config import CONFIG_FILE, STATE_DIR

TEMPLATE = """\
# beads-runner configuration. Every key is optional; the values shown are the defaults.
# Durations: "90s", "5m", "1h" (plain numbers are seconds).

sandbox = "auto"          # agents and gates under bubblewrap (apt-get install bubblewrap); "off": unconfined

[tracker]
kind = "{tracker_kind}"          # "bd": the bd CLI; "jsonl": .beads/issues.jsonl in beads' export format
command = "bd"            # the bd executable (name on PATH or a path)
actor = "beads-runner"    # passed as --actor on every bd call; claims and comments carry it
# path = ".beads/issues.jsonl"   # the jsonl tracker's file
# poll_interval = "5s"    # how often `start` asks for ready work (changes in .beads/ wake it sooner)
# require_labels = ["agent-ok"]   # only trusted work: claim only issues carrying all these labels
# trusted_creators = ["alice"]    # ... and only issues these actors created

[agent]
kind = "opencode"         # or "command": any CLI that takes the prompt on stdin
# command = "opencode"    # default: opencode on PATH, then node_modules/.bin/opencode
# mode = "run"            # opencode: "run" (a process per session) or "server" (one `opencode serve`)
model = "{model}"         # provider/model, passed as --model
timeout = "30m"           # wall-clock limit of one session
stall_timeout = "5m"      # no event from the agent for this long: kill it and retry
# args = []               # extra arguments for the agent
# env = {{}}                # extra environment for the agent
# daily_budget_usd = 20.0 # spent today (UTC): no new sessions until the day turns or `resume --raise-budget`
# park_backoff = "1m"     # a spent quota with no reset time: sessions wait this long, doubled per park ...
# park_max = "30m"        # ... at most this long, then one tries again
# writable = []           # directories the agent may write besides its worktree (in the sandbox)

[engine]
kind = "local"            # "local" (embedded, state in .beads-runner/state.db) or "hatchet"
max_sessions = 3          # agent sessions at once, over everything this runner does
# grace_period = "30s"    # on SIGTERM, how long running sessions may finish before being stopped
# handover_attempts = 3   # the tracker refuses the failure comment: tries, then the handover is recorded locally

[engine.retry]
attempts = 3              # tries per step, the first included
backoff = "1s"            # wait before the second try, then x backoff_factor, at most backoff_max
backoff_factor = 2.0
backoff_max = "30s"

[land]
target = "main"           # the branch that receives the work

# Checks on the change itself, against the merge-base with the target.
[diff]
# max_lines = 800         # changed lines (added + deleted); unset: no limit
# max_files = 40
# forbidden = [".github/workflows/**"]   # added to .beads/**, .beads-runner/**, .git/**
# secrets = true          # no private key, .env file or token may be added
# secrets_allow = ["tests/fixtures/**"]

# The yardstick is the target's: a change to what feeds the gates (this file, a script or make target
# a gate runs, test/lint/CI config) or one that deletes, skips or weakens existing tests goes to a
# person, unless the issue carries the label below.
[yardstick]
# protected = ["tools/check/**"]   # more files that define or feed the gates
# gates_label = "gates-change"
# tests_label = "tests-change"

# Webhooks: each event is POSTed as JSON (or a Slack message), retried, never delaying a run.
# [[notify]]
# url = "https://hooks.example.com/beads"
# events = ["landed", "handed_to_person", "parked", "resumed", "budget_reached", "runner_started", "runner_stopped"]
# headers = {{ Authorization = "Bearer ..." }}
# format = "json"         # or "slack"

# Quality gates: commands run (without a shell) in the issue's worktree; all must pass.
# Per gate: env = {{}} (added environment), when = ["src/**"] (run only if the change touches these),
# baseline = true (fail only for failures the target does not already have),
# junit = "report.xml" (test counts from the JUnit XML file the command writes).
{gates}"""


_NPM_PLACEHOLDER = "no test specified"
_MAKE_TEST = re.compile(r"^test\s*::?(?!=)", re.MULTILINE)  # a `test:` rule, not `test := value`


@dataclass(frozen=True)
class GateProposal:
    name: str
    run: str
    enabled: bool = True  # False: written commented out
    baseline: bool = False  # linters: fail only for findings the target does not already have

    def __iter__(self):  # (name, run, enabled), as propose_gates returned before
        return iter((self.name, self.run, self.enabled))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    except OSError:
        return ""


def _python() -> str:
    return "python" if executables.on_path("python") or not executables.on_path("python3") else "python3"


def _npm_test_script(repo: Path) -> str | None:
    try:
        data = json.loads(_read(repo / "package.json") or "{}")
    except json.JSONDecodeError:
        return None
    scripts = data.get("scripts") if isinstance(data, dict) else None
    test = scripts.get("test") if isinstance(scripts, dict) else None
    return test if isinstance(test, str) and test.strip() and _NPM_PLACEHOLDER not in test else None


def propose_gates(repo: Path) -> list[GateProposal]:
    """The checks this repository appears to have, in the order they are worth running."""
    found: list[GateProposal] = []
    pyproject = _read(repo / "pyproject.toml")
    setup_cfg = _read(repo / "setup.cfg")
    tox_ini = _read(repo / "tox.ini")
    is_python = bool(pyproject) or (repo / "setup.py").is_file() or bool(setup_cfg) or any(repo.glob("*.py"))
    pytest_config = ("[tool.pytest" in pyproject or (repo / "pytest.ini").is_file() or "[tool:pytest]" in setup_cfg
                     or "[pytest]" in tox_ini or (repo / "conftest.py").is_file())
    has_python_tests = any((repo / d).is_dir() and any((repo / d).rglob("test*.py")) for d in ("tests", "test"))
    if pytest_config or (is_python and has_python_tests):
        found.append(GateProposal("tests", f"{_python()} -m pytest -q"))
    if "[tool.ruff" in pyproject or (repo / "ruff.toml").is_file() or (repo / ".ruff.toml").is_file():
        found.append(GateProposal("lint", "ruff check .", baseline=True))
    if ("[tool.mypy" in pyproject or (repo / "mypy.ini").is_file() or (repo / ".mypy.ini").is_file()
            or "[mypy]" in setup_cfg):
        found.append(GateProposal("types", "mypy .", baseline=True))
    if _npm_test_script(repo) is not None:
        runner = "pnpm" if (repo / "pnpm-lock.yaml").is_file() else "yarn" if (repo / "yarn.lock").is_file() else "npm"
        found.append(GateProposal("npm-test", f"{runner} test --silent" if runner == "npm" else f"{runner} test"))
    if (repo / "go.mod").is_file():
        found.append(GateProposal("go-test", "go test ./..."))
    if (repo / "Cargo.toml").is_file():
        found.append(GateProposal("cargo-test", "cargo test"))
    makefile = next((p for p in ("GNUmakefile", "makefile", "Makefile") if (repo / p).is_file()), None)
    if makefile and _MAKE_TEST.search(_read(repo / makefile)):
        # Likely the same tests as above when something else was found: proposed, commented out.
        found.append(GateProposal("make-test", "make test", enabled=not found))
    return found


def render_config(repo: Path) -> str:
    gates = propose_gates(repo)
    if gates:
        blocks = []
        for g in gates:
            prefix = "" if g.enabled else "# "
            lines = ["[[gates]]", f"name = {json.dumps(g.name)}", f"run = {json.dumps(g.run)}", 'timeout = "10m"']
            if g.baseline:
                lines.append("baseline = true           # fail only for findings the target does not already have")
            blocks.append("".join(f"{prefix}{line}\n" for line in lines))
        gate_text = "\n".join(blocks)
    else:
        gate_text = ('# No test command was found. Add one, for example:\n# [[gates]]\n# name = "tests"\n'
                     '# run = "python -m pytest -q"\n# timeout = "10m"\n')
    kind = "bd" if executables.on_path("bd") or not (repo / ".beads" / "issues.jsonl").is_file() else "jsonl"
    return TEMPLATE.format(tracker_kind=kind, model="anthropic/claude-sonnet-4-5", gates=gate_text)


def ensure_gitignored(repo: Path) -> bool:
    """Add `.beads-runner/` to .gitignore unless it is there. Returns whether it changed the file."""
    path = repo / ".gitignore"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if any(line.strip().rstrip("/") in (STATE_DIR, "/" + STATE_DIR) for line in text.splitlines()):
        return False
    path.write_text(text + ("" if text.endswith("\n") or not text else "\n") + f"{STATE_DIR}/\n", encoding="utf-8")
    return True


def init_repo(repo: Path, force: bool = False) -> list[str]:
    """Write the config and the .gitignore entry; returns what was done, one line each."""
    done = []
    config = repo / CONFIG_FILE
    if config.exists() and not force:
        done.append(f"{config} exists; left as it is (--force rewrites it)")
    else:
        config.write_text(render_config(repo), encoding="utf-8")
        done.append(f"wrote {config}")
    if ensure_gitignored(repo):
        done.append(f"added {STATE_DIR}/ to .gitignore")
    return done
