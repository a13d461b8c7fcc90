"""The process groups the runner started (agent sessions, gates), recorded on disk.

Agents and gates run in their own sessions so that a timeout can kill a whole group (opencode and
every tool it spawned). The price: killing the runner with SIGKILL does not kill them. So every
group is recorded in `.beads-runner/procs/` while it runs, and the next runner for the repository
(or any live runner, when it finds the owner dead) kills the groups whose owner is gone — before
the interrupted step runs again in the same worktree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from beads_runner.jsonfile import write_atomic

log = structlog.get_logger("beads_runner.procreg")

_dir: Path | None = None
_lock = threading.Lock()


def configure(directory: Path | None) -> None:
    """Where this process records its children (None: nowhere)."""
    global _dir
    with _lock:
        _dir = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)


def exited(pid: int) -> bool:
    """Whether our child `pid` has exited, without reaping it: while its zombie stands, its process
    group id cannot be given to anyone else, so signalling that group is still safe."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_pid != 0


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group(proc: subprocess.Popen, grace: float) -> None:
    """End the group our child leads (start_new_session=True): SIGTERM, SIGKILL after `grace`
    seconds (at once with 0), then reap the child. Also after a normal exit: what the child left
    running in its group goes too."""
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not exited(proc.pid):
        time.sleep(0.05)
    _signal_group(proc.pid, signal.SIGKILL)  # the leader, if still there, and whatever it left behind
    proc.wait()


TAG_VAR = "BEADS_RUNNER_PROC_TAG"


def new_tag() -> str:
    """A value for TAG_VAR in one gate's environment: inherited by everything it starts, even what
    leaves its process group with setsid, so `kill_tagged` finds those too."""
    return f"{os.getpid()}-{uuid.uuid4().hex}"


def kill_tagged(tag: str) -> list[int]:
    """SIGKILL every process whose environment carries TAG_VAR=tag (what a gate left running in a
    session of its own). Returns their pids."""
    needle = f"{TAG_VAR}={tag}".encode()
    killed = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    if killed:
        log.warning("killed processes a gate left running outside its process group", pids=killed)
    return killed


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a pid from its reuse), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _alive(pid: int, ticks: int | None) -> bool:
    now = start_ticks(pid)
    if now is None:
        try:
            os.kill(pid, 0)  # no /proc (not Linux): existence is all we can know
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return ticks is None
    return ticks is None or now == ticks


@contextmanager
def registered(pgid: int, what: str) -> Iterator[None]:
    """Record the group `pgid` (led by the child of that pid) for as long as the block runs."""
    directory = _dir
    path = None
    if directory is not None:
        me = os.getpid()
        path = directory / f"{me}-{pgid}.json"
        record = {"pgid": pgid, "start": start_ticks(pgid), "owner": me, "owner_start": start_ticks(me),
                  "what": what, "since": time.time()}
        try:
            write_atomic(path, json.dumps(record))
        except OSError as exc:
            # The group is already running: supervise it without a record (only a runner killed with
            # SIGKILL would then leave it behind) rather than raise and leave it unsupervised.
            log.warning("could not record a process group", path=str(path), error=str(exc))
            path = None
    try:
        yield
    finally:
        if path is not None:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                # `.beads-runner/` made read-only meanwhile: the record stays behind, and the reaper
                # drops it once its group is gone. The process's own outcome is what the caller needs,
                # not this (which would read as "cannot start").
                log.warning("could not remove a process record", path=str(path), error=str(exc))


def reap_orphans(directory: Path | None = None) -> list[dict]:
    """Kill the recorded groups whose owner process is gone; returns what was reaped."""
    directory = directory or _dir
    if directory is None or not directory.is_dir():
        return []
    reaped = []
    for path in directory.glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if _alive(record["owner"], record.get("owner_start")):
            continue
        pgid = record["pgid"]
        leader_now = start_ticks(pgid)
        if leader_now is not None and record.get("start") is not None and leader_now != record["start"]:
            path.unlink(missing_ok=True)  # the pid was reused by an unrelated process: not ours to kill
            continue
        killed = False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                break
            killed = True
            if sig == signal.SIGTERM:
                time.sleep(1.0)
        if killed:
            log.warning("killed a process group left by a dead runner", pgid=pgid, what=record.get("what"),
                        dead_owner=record["owner"])
            reaped.append(record)
        path.unlink(missing_ok=True)
    return reaped
