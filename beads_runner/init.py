"""`beads-runner init`: a commented configuration, gates proposed from what the repository has."""

from __future__ import annotations

import shutil
from pathlib import Path

from beads_runner.config import CONFIG_FILE, STATE_DIR

TEMPLATE = """\
# beads-runner configuration. Every key is optional; the values shown are the defaults.
# Durations: "90s", "5m", "1h" (plain numbers are seconds).

[tracker]
kind = "{tracker_kind}"          # "bd": the bd CLI; "jsonl": .beads/issues.jsonl in beads' export format
command = "bd"            # the bd executable (name on PATH or a path)
actor = "beads-runner"    # passed as --actor on every bd call; claims and comments carry it
# path = ".beads/issues.jsonl"   # the jsonl tracker's file
# poll_interval = "5s"    # how often `start` asks for ready work (changes in .beads/ wake it sooner)

[agent]
kind = "opencode"         # or "command": any CLI that takes the prompt on stdin
# command = "opencode"    # default: opencode on PATH, then node_modules/.bin/opencode
model = "{model}"         # provider/model, passed as --model
timeout = "30m"           # wall-clock limit of one session
stall_timeout = "5m"      # no event from the agent for this long: kill it and retry
# args = []               # extra arguments for the agent
# env = {{}}                # extra environment for the agent

[engine]
kind = "local"            # "local" (embedded, state in .beads-runner/state.db) or "hatchet"
max_sessions = 3          # agent sessions at once, over everything this runner does
# grace_period = "30s"    # on SIGTERM, how long running sessions may finish before being stopped

[engine.retry]
attempts = 3              # tries per step, the first included
backoff = "1s"            # wait before the second try, then x backoff_factor, at most backoff_max
backoff_factor = 2.0
backoff_max = "30s"

[land]
target = "main"           # the branch that receives the work

# Quality gates: commands run (without a shell) in the issue's worktree; all must pass.
{gates}"""


def propose_gates(repo: Path) -> list[tuple[str, str, bool]]:
    """(name, command, enabled) for the checks this repository appears to have."""
    found: list[tuple[str, str, bool]] = []
    pyproject = (repo / "pyproject.toml").read_text(encoding="utf-8", errors="replace") \
        if (repo / "pyproject.toml").is_file() else ""
    if (repo / "tests").is_dir() or (repo / "pytest.ini").is_file() or "[tool.pytest" in pyproject:
        found.append(("tests", "python -m pytest -q", True))
    if "[tool.ruff" in pyproject or (repo / "ruff.toml").is_file():
        found.append(("lint", "ruff check .", True))
    if "[tool.mypy" in pyproject or (repo / "mypy.ini").is_file():
        found.append(("types", "mypy .", True))
    if (repo / "package.json").is_file():
        found.append(("npm-test", "npm test --silent", True))
    if (repo / "go.mod").is_file():
        found.append(("go-test", "go test ./...", True))
    if (repo / "Cargo.toml").is_file():
        found.append(("cargo-test", "cargo test", True))
    if (repo / "Makefile").is_file() and "\ntest:" in "\n" + (repo / "Makefile").read_text(errors="replace"):
        found.append(("make-test", "make test", not found))
    return found


def render_config(repo: Path) -> str:
    gates = propose_gates(repo)
    if gates:
        blocks = []
        for name, run, enabled in gates:
            prefix = "" if enabled else "# "
            blocks.append("".join(f"{prefix}{line}\n" for line in
                                  ("[[gates]]", f'name = "{name}"', f'run = "{run}"', 'timeout = "10m"')))
        gate_text = "\n".join(blocks)
    else:
        gate_text = ('# No test command was found. Add one, for example:\n# [[gates]]\n# name = "tests"\n'
                     '# run = "python -m pytest -q"\n# timeout = "10m"\n')
    kind = "bd" if shutil.which("bd") or not (repo / ".beads" / "issues.jsonl").is_file() else "jsonl"
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
