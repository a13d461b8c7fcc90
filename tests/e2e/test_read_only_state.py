"""`.beads-runner/` made read-only while a run is in flight (issue 17, item 17).

A reviewer saw the daemon die (SIGBUS) when its state directory became read-only mid-run. What must
hold instead: `start` stops with the error and its fix, no traceback, no crash by signal, nothing it
started left running; and once the directory is writable again, the next `start` resumes the run and
lands the work. Real git, the bd stand-in and a `command` agent that waits for the test's signal.

Root ignores permission bits; the runner is therefore started without CAP_DAC_OVERRIDE (and its
friends) when the test runs as root, so the mode bits apply to it as to any user."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import BEADS_RUNNER, git, issue
from tests.fakes.bd_standin import create_issue, make_beads_repo, standin_env
from tests.helpers import processes_with


def _as_a_plain_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:  # util-linux: on every Debian machine
        pytest.fail("setpriv (util-linux) is needed to run the runner as root without DAC override")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def _chmod_tree(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.lstat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _wait_for(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_state_made_read_only_mid_run_stops_start_with_its_fix_and_the_next_start_lands_the_work(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "T")
    git(repo, "config", "user.email", "t@example.com")
    (repo / ".gitignore").write_text(".beads-runner/\n")
    make_beads_repo(repo, prefix="ro")
    signal_dir = tmp_path / "signal"
    signal_dir.mkdir()
    marker = f"ro-agent-{os.getpid()}"
    (tmp_path / "agent.py").write_text(textwrap.dedent(f"""\
        # {marker}
        import sys, time
        from pathlib import Path
        sys.stdin.read()
        Path("{signal_dir}/started").write_text("yes")
        while not Path("{signal_dir}/go").exists():
            time.sleep(0.05)
        Path("work.txt").write_text("the work\\n")
        """))
    (repo / ".beads-runner.toml").write_text(textwrap.dedent(f"""\
        [tracker]
        poll_interval = "1s"
        [agent]
        kind = "command"
        command = "{sys.executable} {tmp_path / 'agent.py'}"
        timeout = "120s"
        writable = ["{signal_dir}"]
        [engine.retry]
        backoff = "0.2s"
        """))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    issue_id = create_issue(repo, "Write the work")
    env = standin_env()
    argv = [str(BEADS_RUNNER), "--repo", str(repo), "start", "--once"]

    runner = subprocess.Popen([*_as_a_plain_user(), *argv], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = repo / ".beads-runner"
    try:
        _wait_for("the agent to start", lambda: (signal_dir / "started").exists() or runner.poll() is not None, 120)
        assert runner.poll() is None, runner.communicate()
        _chmod_tree(state, writable=False)
        (signal_dir / "go").write_text("go")
        out, err = runner.communicate(timeout=180)
    finally:
        if runner.poll() is None:
            runner.kill()
        _chmod_tree(state, writable=True)

    assert runner.returncode == 2, (runner.returncode, err[-3000:])  # not killed by a signal (SIGBUS is -7)
    assert "Traceback" not in err, err[-3000:]
    assert "error: cannot write" in err and "Permission denied" in err, err[-3000:]
    assert "fix: make it writable" in err and "nothing was lost" in err, err[-3000:]
    assert "cannot start" not in err, err[-3000:]  # the agent did start: its failure must not read as that
    assert not processes_with(marker, wait=10)
    assert (repo / "work.txt").exists() is False  # nothing landed half-way
    assert issue(repo, issue_id)["status"] == "in_progress"  # still ours: not handed over, not lost

    # Writable again: the next start resumes the run and lands the work.
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (repo / "work.txt").read_text() == "the work\n"
    assert issue(repo, issue_id)["status"] == "closed"
    assert "Traceback" not in result.stderr
