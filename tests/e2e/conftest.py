"""Shared pieces of the end-to-end tests: real git, the real opencode binary, the scripted model,
the bd stand-in, and `beads-runner` run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from beads_runner.scripted_model import ScriptedModelServer
from bench.stats import max_overlap  # the benchmarks' interval arithmetic, shared
from tests.e2e.hatchet_real import hatchet_engine  # noqa: F401 - one real engine for the whole session
from tests.fakes.bd_standin import bd_json, create_issue, make_beads_repo, standin_env

ROOT = Path(__file__).resolve().parents[2]
OPENCODE = ROOT / "node_modules" / ".bin" / "opencode"
BEADS_RUNNER = Path(sys.executable).parent / "beads-runner"
# agent.mode of the repositories sample_repo() makes; tests of the server mode run the same test
# bodies with this set to "server" (tests/e2e/test_server_mode.py).
AGENT_MODE = "run"


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def opencode_bin() -> Path:
    if not OPENCODE.exists():
        pytest.skip("node_modules/.bin/opencode is missing: run `make setup`")
    return OPENCODE


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def sample_repo(path: Path, *, gate: str | None = None, max_sessions: int = 3, extra_config: str = "",
                sandbox: str = "auto") -> Path:
    """A git repository with a tiny Python package, a unittest gate and a bd (stand-in) database."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test User")
    git(path, "config", "user.email", "test@example.com")
    (path / "pkg").mkdir()
    (path / "pkg" / "__init__.py").write_text("")
    (path / "tests").mkdir()
    (path / "tests" / "__init__.py").write_text("")
    (path / "tests" / "test_base.py").write_text("import unittest\n\n\nclass T(unittest.TestCase):\n"
                                                 "    def test_ok(self):\n        self.assertTrue(True)\n")
    gate = gate or f"{sys.executable} -m unittest discover -s tests -t . -q"
    (path / ".beads-runner.toml").write_text(textwrap.dedent(f"""\
        sandbox = "{sandbox}"
        [tracker]
        kind = "bd"
        poll_interval = "1s"

        [agent]
        model = "scripted/scripted"
        mode = "{AGENT_MODE}"
        timeout = "4m"
        stall_timeout = "2m"

        [engine]
        max_sessions = {max_sessions}

        [engine.retry]
        backoff = "0.5s"

        [[gates]]
        name = "tests"
        run = "{gate}"
        timeout = "2m"
        """) + extra_config)
    (path / ".gitignore").write_text(".beads-runner/\n__pycache__/\n")
    make_beads_repo(path, prefix="tt")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def writes(*files: tuple[str, str], summary: str = "Done.") -> list[list[dict]]:
    """A scripted round: one turn writing `files`, then a summary turn."""
    return [[{"text": "Writing.", "tools": [{"name": "write", "args": {"filePath": p, "content": c}}
                                            for p, c in files]},
             {"text": summary}]]


@pytest.fixture
def runner_env(tmp_path, opencode_bin):
    """Start a scripted model server for `script`; return the environment `beads-runner` needs."""
    servers: list[ScriptedModelServer] = []

    def make(script: dict) -> tuple[dict[str, str], ScriptedModelServer]:
        server = ScriptedModelServer(script).start()
        servers.append(server)
        env = standin_env(**server.opencode_env())
        env["XDG_DATA_HOME"] = str(tmp_path / "opencode-data")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        return env, server

    yield make
    for server in servers:
        server.stop()


def run_cli(repo: Path, env: dict[str, str], *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run([str(BEADS_RUNNER), "--repo", str(repo), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def issue(repo: Path, issue_id: str) -> dict:
    shown = bd_json(repo, "show", issue_id)
    return shown[0] if isinstance(shown, list) else shown


def recorded_engine(repo: Path):
    """The embedded engine of a repository the runner worked in, to read what it recorded."""
    from workflows.local import LocalEngine
    from workflows.task_flow import TASK_FLOW

    return LocalEngine(repo / ".beads-runner" / "state.db", TASK_FLOW)


def session_intervals(repo: Path) -> list[tuple[float, float]]:
    tries = recorded_engine(repo).tries("process")
    return [(t["started_at"], t["finished_at"]) for t in tries if t["finished_at"] is not None]


__all__ = ["create_issue", "git", "issue", "max_overlap", "recorded_engine", "run_cli", "sample_repo",
           "session_intervals", "writes"]
