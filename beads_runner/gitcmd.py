"""The one way the runner and its gates run git: GitPython's command runner, made safe.

Every call: an argv (never a shell), stdin closed, no repository hook (`core.hooksPath=/dev/null`:
the agent's change, or anything that wrote into .git, must not get the runner to execute it), no
fsmonitor command, no prompt for credentials, English messages. It runs in a session of its own,
like bd: a signal to the runner's process group must not kill git mid-write (a half-written ref or
a left index.lock); the caller stops after the call instead. A call ends early when `cancel` is
set (a step's timeout, a stop) or past `timeout` seconds: SIGTERM first (git removes its lock
files), then SIGKILL.

`Workspace.git` (beads_runner/workspace.py) and `quality_gates.change.git` wrap it with their own
errors; GitPython's `Repo` reads what needs no process (config, for one).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import git

from beads_runner import procreg

# On every git call of the runner: repository hooks never run, nor does an fsmonitor command.
SAFE_GIT_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
POLL = 0.1  # seconds between looks at `cancel` and the clock while git runs


class GitNotRun(Exception):
    """git could not be started (not installed, the directory is gone)."""


class GitStopped(Exception):
    """The call was ended before git finished: `cancel` was set, or `timeout` passed."""

    def __init__(self, message: str, *, timed_out: bool):
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True)
class GitResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def text(self) -> str:
        """stdout as text (undecodable bytes kept, for paths), without its final newline."""
        out = self.stdout.decode("utf-8", "surrogateescape")
        return out[:-1] if out.endswith("\n") else out

    def message(self) -> str:
        """What git said about a failure: stderr, else stdout."""
        return (self.stderr.decode("utf-8", "replace") or self.stdout.decode("utf-8", "replace")).strip()


def run_git(args: Sequence[str], *, cwd: Path | str, env: Mapping[str, str] | None = None,
            config: Sequence[str] = (), cancel: threading.Event | None = None,
            timeout: float | None = None) -> GitResult:
    """`git <SAFE_GIT_CONFIG> <config> <args>` in `cwd` to its end; raises GitNotRun or GitStopped.

    env: added to this process's environment (GitPython sets LANGUAGE and LC_ALL to C)."""
    # `-C`: should `cwd` go away, GitPython would start git in this process's directory (another
    # repository, maybe); with -C git refuses instead.
    argv = [git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", "-C", str(cwd), *SAFE_GIT_CONFIG, *config, *args]
    if not Path(cwd).is_dir():
        raise GitNotRun(f"{cwd} is not a directory")
    try:
        handle = git.Git(str(cwd)).execute(argv, as_process=True, env={**(env or {}), "GIT_TERMINAL_PROMPT": "0"},
                                           start_new_session=True)
    except (git.GitCommandNotFound, OSError) as exc:
        raise GitNotRun(str(exc)) from None
    proc: subprocess.Popen = handle.proc
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            out, err = proc.communicate(timeout=POLL)
            break
        except subprocess.TimeoutExpired:
            timed_out = deadline is not None and time.monotonic() >= deadline
            if timed_out or (cancel is not None and cancel.is_set()):
                procreg.kill_group(proc, 3.0)  # SIGTERM first: git removes its lock files
                raise GitStopped(f"git {' '.join(args[:3])} was stopped "
                                 + (f"after {timeout:g}s" if timed_out else "(cancelled)"),
                                 timed_out=timed_out) from None
    return GitResult(proc.returncode, out or b"", err or b"")
