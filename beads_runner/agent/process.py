"""An agent session's process: the prompt on stdin, its output read line by line, its limits.

The process itself is started, limited and killed by `beads_runner.supervisor` (the same
supervisor as the gates'); here its lines are handed to the agent's callbacks, a line on stdout
(and on stderr, with `stall_on_stderr`) counts as activity for the stall limit, and the last lines
are kept for people (`stderr_tail`, `output_tail`, without colour codes).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from beads_runner.supervisor import Supervised, supervise

LineCallback = Callable[[str], None]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")

MAX_LINE = 16 << 20  # bytes of one output line read at once (opencode's events are single JSON lines)


@dataclass
class ProcessOutcome(Supervised):
    """How the session's process ended (`Supervised`), and what it said."""

    stdout_lines: int = 0
    stderr_tail: list[str] = field(default_factory=list)  # the last lines of stderr
    output_tail: list[str] = field(default_factory=list)  # the last lines of stdout and stderr, interleaved
    callback_errors: list[str] = field(default_factory=list)


def call_guarded(callback: Callable[[object], None], value: object, errors: list[str], what: str) -> None:
    """Call a caller's callback; a faulty one must not stop the supervision: its first errors are kept."""
    try:
        callback(value)
    except Exception as exc:
        if len(errors) < 5:
            errors.append(f"{what} callback raised {type(exc).__name__}: {exc}")


def run_supervised(
    argv: Sequence[str],
    *,
    cwd: Path | str | None,
    env: Mapping[str, str],
    stdin_text: str,
    timeout: float,
    stall_timeout: float,
    cancel: threading.Event | None = None,
    on_stdout: LineCallback | None = None,
    on_stderr: LineCallback | None = None,
    stall_on_stderr: bool = False,
    tail_lines: int = 40,
    kill_grace: float = 3.0,
    writable: Sequence[Path | str] = (),
) -> ProcessOutcome:
    """Run the agent's `argv` to its end or a limit. Raises OSError only if it cannot be started at all.

    It runs in the active sandbox (`beads_runner.sandbox`): `cwd` and `writable` are all it may write."""
    lock = threading.Lock()
    last_activity = [time.monotonic()]
    stderr_tail: deque[str] = deque(maxlen=tail_lines)
    output_tail: deque[str] = deque(maxlen=tail_lines)
    counts = {"stdout": 0}
    callback_errors: list[str] = []

    def reader(stream_name: str, callback: LineCallback | None, counts_as_activity: bool):
        def read(pipe: IO[bytes]) -> None:
            # Bounded: a line longer than MAX_LINE arrives in pieces (an endless line cannot take the memory).
            for raw in iter(lambda: pipe.readline(MAX_LINE), b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                with lock:
                    if counts_as_activity:
                        last_activity[0] = time.monotonic()
                    plain = _ANSI.sub("", line)  # the tails are for people: no colour codes
                    output_tail.append(plain)
                    if stream_name == "stderr":
                        stderr_tail.append(plain)
                    else:
                        counts["stdout"] += 1
                if callback is not None:
                    call_guarded(callback, line, callback_errors, stream_name)
        return read

    def idle_for() -> float:
        with lock:
            return time.monotonic() - last_activity[0]

    ended = supervise(
        argv, what="agent", cwd=cwd, env=env, timeout=timeout, stdin_text=stdin_text,
        stdout=reader("stdout", on_stdout, True), stderr=reader("stderr", on_stderr, stall_on_stderr),
        cancel=cancel, idle_for=idle_for, stall_timeout=stall_timeout, kill_grace=kill_grace, writable=writable,
    )
    with lock:
        return ProcessOutcome(
            exit_code=ended.exit_code, duration_s=ended.duration_s,
            timed_out=ended.timed_out, stalled=ended.stalled, cancelled=ended.cancelled,
            stdout_lines=counts["stdout"],
            stderr_tail=list(stderr_tail), output_tail=list(output_tail),
            callback_errors=list(callback_errors),
        )
