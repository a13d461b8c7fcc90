"""Supervising an agent subprocess: prompt on stdin, lines out, limits, and a clean kill.

The child runs in its own session (`start_new_session=True`), so its process group holds it and
everything it spawned. On the wall-clock limit, a stall (no output line for `stall_timeout`) or
`cancel`, the whole group gets SIGTERM, then SIGKILL after `kill_grace` seconds. When the child
exits by itself, anything it left running in its group is killed too. The leader is reaped only
after the group has been signalled (`waitid(..., WNOWAIT)`), so the group id can never have been
reused by an unrelated process when we signal it.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from beads_runner import procreg, sandbox

LineCallback = Callable[[str], None]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")

TICK = 0.05  # how often the supervisor looks at the clock
MAX_LINE = 16 << 20  # bytes of one output line read at once (opencode's events are single JSON lines)
READER_GRACE = 10.0  # after the group is gone, how long to wait for the readers to drain the pipes


@dataclass
class ProcessOutcome:
    exit_code: int | None  # negative: killed by that signal
    duration_s: float
    timed_out: bool = False
    stalled: bool = False
    cancelled: bool = False
    stdout_lines: int = 0
    stderr_tail: list[str] = field(default_factory=list)  # the last lines of stderr
    output_tail: list[str] = field(default_factory=list)  # the last lines of stdout and stderr, interleaved
    callback_errors: list[str] = field(default_factory=list)

    @property
    def killed(self) -> bool:
        return self.timed_out or self.stalled or self.cancelled


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
    """Run `argv` to its end or a limit. Raises OSError only if it cannot be started at all.

    It runs in the active sandbox (`beads_runner.sandbox`): `cwd` and `writable` are all it may write."""
    started = time.monotonic()
    tag = procreg.new_tag()  # inherited by whatever the agent starts, even in a session of its own
    proc = subprocess.Popen(
        sandbox.wrap(argv, cwd=cwd, writable=writable), cwd=cwd, env={**env, procreg.TAG_VAR: tag},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
    )
    lock = threading.Lock()
    last_activity = [time.monotonic()]
    stderr_tail: deque[str] = deque(maxlen=tail_lines)
    output_tail: deque[str] = deque(maxlen=tail_lines)
    counts = {"stdout": 0}
    callback_errors: list[str] = []

    def feed_stdin() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(stdin_text.encode("utf-8"))
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def read(stream_name: str, callback: LineCallback | None, counts_as_activity: bool) -> None:
        pipe = proc.stdout if stream_name == "stdout" else proc.stderr
        assert pipe is not None
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

    threads = [
        threading.Thread(target=feed_stdin, name="agent-stdin", daemon=True),
        threading.Thread(target=read, args=("stdout", on_stdout, True), name="agent-stdout", daemon=True),
        threading.Thread(target=read, args=("stderr", on_stderr, stall_on_stderr), name="agent-stderr",
                         daemon=True),
    ]
    for thread in threads:
        thread.start()

    timed_out = stalled = cancelled = False
    # Recorded while it runs, so a runner killed with SIGKILL does not leave the session running.
    with procreg.registered(proc.pid, f"agent {argv[0]}"):
        try:
            while True:
                if procreg.exited(proc.pid):
                    break
                now = time.monotonic()
                with lock:
                    silent_for = now - last_activity[0]
                if now - started >= timeout:
                    timed_out = True
                elif silent_for >= stall_timeout:
                    stalled = True
                elif cancel is not None and cancel.is_set():
                    cancelled = True
                if timed_out or stalled or cancelled:
                    break
                if cancel is not None:
                    cancel.wait(TICK)
                else:
                    time.sleep(TICK)
        finally:
            # On a limit, and also after a normal exit (leftover children of the group), and if this
            # thread is interrupted: the group goes.
            procreg.kill_group(proc, kill_grace if (timed_out or stalled or cancelled) else 0.0)
            procreg.kill_tagged(tag)  # what left the group (setsid): confined, the pid namespace ends it too
    deadline = time.monotonic() + READER_GRACE
    for thread in threads[1:]:
        thread.join(max(0.0, deadline - time.monotonic()))
    if not any(t.is_alive() for t in threads[1:]):
        # Otherwise a process that left the group (setsid) still holds a pipe: leave the
        # daemon readers to it rather than closing a file under a reading thread.
        for pipe in (proc.stdout, proc.stderr):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
    with lock:
        return ProcessOutcome(
            exit_code=proc.returncode,
            duration_s=time.monotonic() - started,
            timed_out=timed_out, stalled=stalled, cancelled=cancelled,
            stdout_lines=counts["stdout"],
            stderr_tail=list(stderr_tail), output_tail=list(output_tail),
            callback_errors=list(callback_errors),
        )
