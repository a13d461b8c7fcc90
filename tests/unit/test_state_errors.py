"""A damaged or unwritable `.beads-runner/` (issue 17, items 16 and 17): `error:` and `fix:`, exit 2,
never a traceback."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.fakes.bd_standin import standin_env
from tests.unit.test_cli import BEADS_RUNNER, cli, git_repo
from tests.unit.test_sandbox import needs_bwrap


@pytest.fixture
def repo(tmp_path):
    path = git_repo(tmp_path / "r")
    (path / ".beads-runner.toml").write_text('sandbox = "off"\n[tracker]\nkind = "jsonl"\n')
    (path / ".beads").mkdir()
    (path / ".beads" / "issues.jsonl").write_text("")
    return path


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("command", [("start", "--once"), ("status",)])
def test_a_damaged_state_database_is_an_error_with_its_fix(repo, damage, command):
    assert cli(repo, "start", "--once").returncode == 0  # a real state.db, with its schema
    db = repo / ".beads-runner" / "state.db"
    for extra in (db.with_name("state.db-wal"), db.with_name("state.db-shm")):
        extra.unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(bytes(range(256)) * 8 if damage == "garbage" else data[: len(data) // 2])
    result = cli(repo, *command)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: the run state {db} is damaged" in result.stderr
    assert f"fix: move it away (mv {db} {db}.damaged" in result.stderr


def test_a_read_only_state_directory_is_an_error_with_its_fix(repo):
    needs_bwrap()
    state = repo / ".beads-runner"
    state.mkdir()
    # A read-only mount of .beads-runner/ (root ignores permission bits; a mount it cannot).
    argv = [shutil.which("bwrap"), "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--ro-bind", str(state), str(state), str(BEADS_RUNNER), "--repo", str(repo), "start", "--once"]
    result = subprocess.run(argv, capture_output=True, text=True, env=standin_env(), timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: {state} is not writable: Read-only file system" in result.stderr and "fix: make" in result.stderr
