"""Small things many tests need: git as a subprocess, and a fresh repository with an identity."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` (failing the test on error); its output, stripped."""
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def new_repo(path: Path, *, branch: str = "main") -> Path:
    """`git init` at `path` (created), with a committer identity; nothing committed yet."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    git(path, "config", "user.name", "Test User")
    git(path, "config", "user.email", "test@example.com")
    return path


def processes_with(marker: str, wait: float = 0.0) -> list[int]:
    """Pids of live processes whose command line contains `marker`. With `wait`, give processes that
    are on their way out (a killed group, a pid namespace being torn down) up to that long to go."""
    deadline = time.monotonic() + wait
    while True:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                        pids.append(int(entry.name))
                except OSError:
                    pass
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.1)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped: a real dead pid, not a guessed number
    that some process on the machine may hold. (Pids are reused only after the kernel wraps around
    pid_max, far beyond the few a test starts meanwhile.)"""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def command_agent_repo(path: Path, agent: Path, *, top: str = "", tracker: str = "", engine: str = "") -> Path:
    """A git repository with an empty JSONL beads store, whose agent is the `command` agent running the
    script `agent` with this Python (retry backoff 0.05 s). `top` goes at the top of .beads-runner.toml,
    `tracker` and `engine` into those sections (TOML lines)."""
    new_repo(path)
    (path / ".gitignore").write_text(".beads-runner/\n")
    config = top + '[tracker]\nkind = "jsonl"\n' + tracker
    config += f'[agent]\nkind = "command"\ncommand = "{sys.executable} {agent}"\n'
    if engine:
        config += "[engine]\n" + engine
    config += '[engine.retry]\nbackoff = "0.05s"\n'
    (path / ".beads-runner.toml").write_text(config)
    (path / ".beads").mkdir()
    (path / ".beads" / "issues.jsonl").write_text("")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "init")
    return path
