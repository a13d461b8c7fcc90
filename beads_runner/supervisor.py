"""The one supervisor of the OS processes the runner starts for a step: agent sessions and gates.

A supervised process runs in the active sandbox (`beads_runner.sandbox`), in its own session
(`start_new_session=True`), so its process group holds it and everything it spawned. It carries
a tag in its environment (`procreg.TAG_VAR`) that whatever it starts inherits, and its group is
recorded on disk while it runs (`procreg.registered`), so a runner killed with SIGKILL does not
leave it running. On the wall-clock limit, a stall (the caller's `idle_for()` past
`stall_timeout`) or `cancel`, the whole group gets SIGTERM, then SIGKILL after `kill_grace`
seconds. When the process exits by itself, whatever it left in its group is killed too, and so is
whatever left the group (setsid) but carries the tag. The leader is reaped only after the group
has been signalled (`waitid(..., WNOWAIT)`), so the group id cannot have been reused meanwhile.

The caller reads the output: `readers` get the pipes, each in a thread of its own.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from beads_runner import procreg, sandbox

TICK = 0.05  # how often the supervisor looks at the clock
READER_GRACE = 10.0  # after the group is gone, how long to wait for the readers to drain the pipes

Reader = Callable[[IO[bytes]], None]


@dataclass
class Supervised:
    """How a supervised process ended."""

    exit_code: int | None  # negative: killed by that signal
    duration_s: float
    timed_out: bool = False
    stalled: bool = False
    cancelled: bool = False

    @property
    def killed(self) -> bool:
        return self.timed_out or self.stalled or self.cancelled


def supervise(
    argv: Sequence[str],
    *,
    what: str,
    cwd: Path | str | None,
    env: Mapping[str, str],
    timeout: float,
    stdout: Reader,
    stderr: Reader | None = None,
    stdin_text: str | None = None,
    cancel: threading.Event | None = None,
    idle_for: Callable[[], float] | None = None,
    stall_timeout: float | None = None,
    kill_grace: float = 3.0,
    writable: Sequence[Path | str] = (),
) -> Supervised:
    """Run `argv` to its end or a limit. Raises OSError only if it cannot be started at all.

    what: "agent" or "gate", for the on-disk record. stderr None: merged into stdout. stdin_text
    None: stdin is closed. `cwd` and `writable` are all the process may write."""
    started = time.monotonic()
    tag = procreg.new_tag()
    proc = subprocess.Popen(
        sandbox.wrap(argv, cwd=cwd, writable=writable), cwd=cwd, env={**env, procreg.TAG_VAR: tag},
        stdin=subprocess.DEVNULL if stdin_text is None else subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if stderr is None else subprocess.PIPE, start_new_session=True, close_fds=True,
    )
    threads = [threading.Thread(target=stdout, args=(proc.stdout,), name=f"{what}-stdout", daemon=True)]
    if stderr is not None:
        threads.append(threading.Thread(target=stderr, args=(proc.stderr,), name=f"{what}-stderr", daemon=True))
    if stdin_text is not None:
        threading.Thread(target=_feed, args=(proc.stdin, stdin_text), name=f"{what}-stdin", daemon=True).start()
    for thread in threads:
        thread.start()

    timed_out = stalled = cancelled = False
    with procreg.registered(proc.pid, f"{what} {argv[0]}"):
        try:
            while not procreg.exited(proc.pid):
                if time.monotonic() - started >= timeout:
                    timed_out = True
                elif stall_timeout is not None and idle_for is not None and idle_for() >= stall_timeout:
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
            # On a limit, after a normal exit (leftovers in the group, a daemonised server say), and
            # if this thread is interrupted (Ctrl-C in `beads-runner gates`): the group goes, once.
            procreg.kill_group(proc, kill_grace if (timed_out or stalled or cancelled) else 0.0)
            procreg.kill_tagged(tag)  # what left the group (setsid): confined, the pid namespace ends it too
    deadline = time.monotonic() + READER_GRACE
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if not any(t.is_alive() for t in threads):
        # Otherwise a process that left the group (setsid) still holds a pipe: leave the daemon
        # readers to it rather than closing a file under a reading thread.
        for pipe in (proc.stdout, proc.stderr):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
    return Supervised(proc.returncode, time.monotonic() - started, timed_out, stalled, cancelled)


def _feed(pipe: IO[bytes] | None, text: str) -> None:
    assert pipe is not None
    try:
        pipe.write(text.encode("utf-8"))
        pipe.flush()
    except (BrokenPipeError, OSError):
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass
