"""The one git runner (beads_runner/gitcmd.py, over GitPython): safe by default, stoppable."""

from __future__ import annotations

import threading

import pytest

from beads_runner.gitcmd import GitNotRun, GitStopped, run_git
from tests.helpers import git, new_repo


def test_output_exit_code_and_message(tmp_path):
    repo = new_repo(tmp_path / "r")
    ok = run_git(["symbolic-ref", "--short", "HEAD"], cwd=repo)
    assert ok.ok and ok.text() == "main"
    bad = run_git(["rev-parse", "--verify", "no-such-ref"], cwd=repo)
    assert not bad.ok and bad.returncode != 0 and "Needed a single revision" in bad.message()


def test_repository_hooks_never_run(tmp_path):
    repo = new_repo(tmp_path / "r")
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\ntouch {tmp_path / 'hook-ran'}\nexit 1\n")
    hook.chmod(0o755)
    (repo / "a.txt").write_text("a\n")
    git(repo, "add", "a.txt")
    assert run_git(["commit", "-q", "-m", "a"], cwd=repo).ok  # the failing hook would have refused it
    assert not (tmp_path / "hook-ran").exists()


def test_english_messages_and_no_credential_prompt(tmp_path):
    repo = new_repo(tmp_path / "r")
    seen = run_git(["-c", "alias.env=!env", "env"], cwd=repo, env={"GIT_TERMINAL_PROMPT": "1", "X_MINE": "y"})
    lines = seen.text().splitlines()
    assert "GIT_TERMINAL_PROMPT=0" in lines and "LANGUAGE=C" in lines and "X_MINE=y" in lines


def test_a_set_cancel_stops_a_blocked_git(tmp_path):
    repo = new_repo(tmp_path / "r")
    cancel = threading.Event()
    cancel.set()
    # An alias runs a shell command: git blocks in it as in a filter that never returns.
    with pytest.raises(GitStopped) as stopped:
        run_git(["-c", "alias.block=!sleep 300", "block"], cwd=repo, cancel=cancel)
    assert not stopped.value.timed_out


def test_a_timeout_stops_it_too(tmp_path):
    repo = new_repo(tmp_path / "r")
    with pytest.raises(GitStopped) as stopped:
        run_git(["-c", "alias.block=!sleep 300", "block"], cwd=repo, timeout=0.3)
    assert stopped.value.timed_out and "after 0.3s" in str(stopped.value)


def test_a_missing_directory_is_not_run(tmp_path):
    with pytest.raises(GitNotRun):
        run_git(["status"], cwd=tmp_path / "gone")
