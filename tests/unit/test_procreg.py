"""The registry of child process groups: a dead owner's groups are killed, a live owner's are not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from beads_runner import procreg
from tests.helpers import dead_pid


def _sleeper() -> tuple[subprocess.Popen, int]:
    """A group leader with a child of its own (the grandchild), both sleeping; the grandchild's pid,
    read once it exists."""
    code = ("import subprocess, sys, time; p = subprocess.Popen(['sleep', '300']); print(p.pid, flush=True); "
            "time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)
    grandchild = int(proc.stdout.readline())
    proc.stdout.close()
    return proc, grandchild


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a killed orphan lingers as one until init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_groups_of_a_live_owner_are_left_alone_and_unregistered_on_exit(tmp_path):
    procreg.configure(tmp_path)
    proc, grandchild = _sleeper()
    try:
        with procreg.registered(proc.pid, "agent"):
            assert len(list(tmp_path.glob("*.json"))) == 1
            assert procreg.reap_orphans() == []  # we are alive: not orphans
            assert proc.poll() is None and _running(grandchild)
        assert not list(tmp_path.glob("*.json"))
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        procreg.configure(None)


def test_groups_of_a_dead_owner_are_killed_whole(tmp_path):
    proc, grandchild = _sleeper()
    assert os.getpgid(grandchild) == proc.pid and _running(grandchild)  # in the group, alive
    dead_owner = dead_pid()
    (tmp_path / f"{dead_owner}-{proc.pid}.json").write_text(json.dumps({
        "pgid": proc.pid, "start": procreg.start_ticks(proc.pid), "owner": dead_owner,
        "owner_start": 1, "what": "agent opencode"}))
    try:
        reaped = procreg.reap_orphans(tmp_path)
        assert [r["pgid"] for r in reaped] == [proc.pid]
        assert proc.wait(30) < 0  # the leader died of a signal
        deadline = time.monotonic() + 30  # the orphaned grandchild is reparented, then reaped by init
        while _running(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(grandchild)  # the grandchild `sleep` went too
        assert not list(tmp_path.glob("*.json"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
        if _running(grandchild):
            os.kill(grandchild, 9)


def test_a_reused_pid_is_never_killed(tmp_path):
    proc, grandchild = _sleeper()
    owner = dead_pid()  # the owner is really gone: only the leader's start time can spare the group
    try:
        (tmp_path / f"{owner}-{proc.pid}.json").write_text(json.dumps({
            "pgid": proc.pid, "start": procreg.start_ticks(proc.pid) + 1, "owner": owner, "owner_start": 1,
            "what": "agent"}))
        assert procreg.reap_orphans(tmp_path) == []
        assert proc.poll() is None and _running(grandchild)
        assert not list(tmp_path.glob("*.json"))  # the stale record is dropped
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
