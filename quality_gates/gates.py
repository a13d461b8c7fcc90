"""Gates: checks the runner runs itself on the agent's work. The agent's word counts for nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from quality_gates.report import GateReport, SuiteReport

TAIL_CHARS = 4000


def tail_text(text: str, limit: int = TAIL_CHARS) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]


@runtime_checkable
class Gate(Protocol):
    name: str

    def run(self, workdir: Path, *, cancel: threading.Event | None = None, log_dir: Path | None = None) -> GateReport:
        """Check `workdir`; never raise for a failing check, report it."""


class CommandGate:
    """A command (argv, never a shell) run in the worktree; exit 0 passes."""

    def __init__(self, name: str, argv: Sequence[str], timeout: float = 600.0, env: dict[str, str] | None = None):
        if not argv:
            raise ValueError(f"gate {name!r} has an empty command")
        self.name = name
        self.argv = list(argv)
        self.timeout = timeout
        self.env = dict(env or {})

    def run(self, workdir: Path, *, cancel: threading.Event | None = None, log_dir: Path | None = None) -> GateReport:
        started = time.monotonic()
        log_path = (log_dir / f"gate-{self.name}.log") if log_dir else None
        env = {**os.environ, **self.env}
        try:
            proc = subprocess.Popen(
                self.argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            return GateReport(
                name=self.name, status="error", duration_s=time.monotonic() - started,
                reason=f"cannot run {self.argv[0]!r}: {exc.strerror or exc}",
            )
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read(65536), b"")),
                                  daemon=True)
        reader.start()
        deadline = started + self.timeout
        timed_out = cancelled = False
        while proc.poll() is None:
            if cancel is not None and cancel.is_set():
                cancelled = True
            elif time.monotonic() >= deadline:
                timed_out = True
            if timed_out or cancelled:
                kill_group(proc)
                break
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        reader.join(timeout=5)
        output = b"".join(chunks).decode("utf-8", errors="replace")
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(output, encoding="utf-8")
        duration = time.monotonic() - started
        common = {"name": self.name, "duration_s": duration, "exit_code": proc.returncode,
                      "output_tail": tail_text(output), "log_path": str(log_path) if log_path else None}
        if timed_out:
            return GateReport(status="fail", reason=f"timed out after {self.timeout:g}s", **common)
        if cancelled:
            return GateReport(status="error", reason="cancelled", **common)
        if proc.returncode != 0:
            return GateReport(status="fail", reason=f"exited {proc.returncode}", **common)
        return GateReport(status="pass", **common)


def kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM the process group, SIGKILL it if still there after `grace` seconds, then reap."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # The leader may be gone while members of its group live on: sweep the group once more.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_suite(gates: Sequence[Gate], workdir: Path, *, cancel: threading.Event | None = None,
              log_dir: Path | None = None) -> SuiteReport:
    """Run every gate (all of them, so a report shows every failure at once)."""
    return SuiteReport(reports=[g.run(workdir, cancel=cancel, log_dir=log_dir) for g in gates])
