"""kill -9 anywhere: SIGKILL the runner's whole process group at each point of a run, restart it, and
check that the issue is closed exactly once, the target has exactly one commit for it, no agent
edit is lost, and nothing the dead runner started is left running.

Real processes throughout: `beads-runner start --once` as a subprocess in its own process group, the
real opencode against the scripted model, real git, the bd stand-in. Failpoints
(beads_runner/failpoints.py) pause the runner at an exact point; the test then kills it from outside.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import BEADS_RUNNER, create_issue, git, issue, sample_repo
from tests.fakes.bd_standin import logged_calls

GATE = """\
import os, sys, time, pathlib
marks = pathlib.Path(sys.argv[1])
marks.mkdir(exist_ok=True)
first = not any(marks.glob("gate-*"))
(marks / f"gate-{os.getpid()}").write_text(str(os.getpid()))
if first and sys.argv[2] == "hang":
    time.sleep(3600)  # only the reaper can end it: the runner that started it is killed meanwhile
"""


def start(repo: Path, env: dict, failpoint: str | None, marks: Path) -> subprocess.Popen:
    env = dict(env)
    if failpoint:
        env["BEADS_RUNNER_FAILPOINT"] = failpoint
        env["BEADS_RUNNER_FAILPOINT_DIR"] = str(marks)
    return subprocess.Popen([str(BEADS_RUNNER), "--repo", str(repo), "start", "--once"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace")
            pytest.fail(f"the runner ended (exit {proc.returncode}) before the kill point:\n{out[-3000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the kill point was never reached")


def processes_mentioning(fragment: str) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline:
            found.append((int(entry.name), cmdline[:200]))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and ") Z " in stat.read_text())


POINTS = ["check-deps", "session-edited", "gates", "after-commit", "after-land", "after-close"]


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_at_each_point_then_restart_lands_exactly_once(point, tmp_path, runner_env):
    marks = tmp_path / "marks"
    (tmp_path / "gate.py").write_text(GATE)
    # Unconfined: what is under test is the recorded process groups a dead runner's successor reaps
    # (the gate also notes its pid outside its worktree). Confined, the sandbox's pid namespace ends
    # them with the runner: tests/e2e/test_hostile.py.
    repo = sample_repo(tmp_path / "repo", sandbox="off",
                       gate=f"{sys.executable} {tmp_path / 'gate.py'} {marks} {'hang' if point == 'gates' else 'pass'}")
    the_issue = create_issue(repo, "Add the feature")
    hang = point == "session-edited"  # the killed runner's opencode then waits forever on its model
    script = {"scenarios": [{"match": f"Issue {the_issue} ", "rounds": [
        [{"text": "Writing.", "tools": [{"name": "write", "args": {"filePath": "pkg/feature.py",
                                                                    "content": "FEATURE = True\n"}}]},
         {"text": "Added pkg/feature.py.", "hang": hang}],
        [{"text": "Picked up where I left off; pkg/feature.py is complete."}],
    ]}]}
    env, server = runner_env(script)
    env["BD_STANDIN_LOG"] = str(tmp_path / "bd-calls.log")

    first = start(repo, env, None if point == "gates" else point, marks)
    if point == "gates":
        wait_for(lambda: marks.exists() and any(marks.glob("gate-*")), 180, first)
    else:
        wait_for(lambda: (marks / f"{point}.hit").exists(), 180, first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    first_gate_pids = [int(p.read_text()) for p in marks.glob("gate-*")] if marks.exists() else []

    second = subprocess.run([str(BEADS_RUNNER), "--repo", str(repo), "start", "--once"], env=env,
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    assert second.returncode == 0, second.stderr[-4000:]
    shown = issue(repo, the_issue)
    assert shown["status"] == "closed"
    commits = git(repo, "log", "main", "--format=%H", f"--grep=Beads-Issue: {the_issue}").split()
    assert len(commits) == 1  # exactly one commit for the issue on the target
    assert shown["close_reason"] == f"Landed {commits[0][:8]} on main (gates: diff=pass tests=pass)"
    assert git(repo, "show", "main:pkg/feature.py") == "FEATURE = True\n"  # the agent's edit is there
    closes = [c for c in logged_calls(tmp_path / "bd-calls.log") if c and c[0] == "close"]
    assert len(closes) == 1  # closed exactly once, across both runners
    assert not processes_mentioning(str(tmp_path / "repo" / ".beads-runner"))  # no opencode, no gate left
    assert not [p for p in first_gate_pids if alive(p)]
    if point == "session-edited":
        # The interrupted session was continued, not started over: a second user message in the same
        # conversation told it so.
        continued = [b for b in server.request_log
                     if sum(1 for m in b.get("messages", []) if m.get("role") == "user") >= 2]
        assert continued and "did not finish" in json.dumps(continued[-1])
    assert not list((repo / ".beads-runner" / "worktrees").iterdir())
