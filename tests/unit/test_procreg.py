"""The registry of child process groups: a dead owner's groups are killed, a live owner's are not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from beads_runner import procreg


def _sleeper() -> subprocess.Popen:
    # A leader with a child of its own: the whole group must go.
    code = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_groups_of_a_live_owner_are_left_alone_and_unregistered_on_exit(tmp_path):
    procreg.configure(tmp_path)
    proc = _sleeper()
    try:
        with procreg.registered(proc.pid, "agent"):
            assert len(list(tmp_path.glob("*.json"))) == 1
            assert procreg.reap_orphans() == []  # we are alive: not orphans
            assert _group_alive(proc.pid)
        assert not list(tmp_path.glob("*.json"))
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        procreg.configure(None)


def test_groups_of_a_dead_owner_are_killed_whole(tmp_path):
    proc = _sleeper()
    time.sleep(0.2)
    dead_owner = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                text=True).stdout.strip()
    (tmp_path / f"{dead_owner}-{proc.pid}.json").write_text(json.dumps({
        "pgid": proc.pid, "start": procreg.start_ticks(proc.pid), "owner": int(dead_owner),
        "owner_start": 1, "what": "agent opencode"}))
    try:
        reaped = procreg.reap_orphans(tmp_path)
        assert [r["pgid"] for r in reaped] == [proc.pid]
        proc.wait(5)
        deadline = time.monotonic() + 5
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _group_alive(proc.pid)  # the grandchild `sleep` went too
        assert not list(tmp_path.glob("*.json"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)


def test_a_reused_pid_is_never_killed(tmp_path):
    proc = _sleeper()
    try:
        (tmp_path / f"1-{proc.pid}.json").write_text(json.dumps({
            "pgid": proc.pid, "start": 12345, "owner": 999999, "owner_start": 1, "what": "agent"}))
        assert procreg.reap_orphans(tmp_path) == []
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
