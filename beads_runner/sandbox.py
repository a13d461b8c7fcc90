"""Containment: agent sessions and gates run under bubblewrap, able to write only where they must.

The agent is untrusted code that obeys whatever an issue says, and the gates run tests that agent
wrote. Both run as the runner's user, so without containment one shell command could write into the
main checkout, its `.git` (a planted hook runs at the next landing), `.beads/` or another issue's
worktree. Under the sandbox:

- the whole filesystem is read-only (`--ro-bind / /`), with a private `/tmp` (a tmpfs) and `/dev`;
- writable: the directory the process works in (the issue's worktree), plus what the caller names
  (the agent's own data and cache directories, `agent.writable`);
- the worktree's `.git` file stays read-only (it points into the main `.git`; the runner commits);
- `--unshare-pid --die-with-parent`: every process it starts dies with it, even one that left its
  session (`setsid`), and the whole tree dies if the runner does.

The network stays: the agent must reach its model provider.

`sandbox = "auto" | "bwrap" | "off"`: auto and bwrap need a working bubblewrap (`start` refuses to
run without one); off runs everything unconfined, the user's explicit choice.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from beads_runner import executables
from beads_runner.errors import RunnerError

MODES = ("auto", "bwrap", "off")
INSTALL_FIX = ('install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`), '
               'or set sandbox = "off" at the top of .beads-runner.toml to run agents and gates unconfined')
PRIVATE_TMP = Path("/tmp")


class SandboxUnavailable(RunnerError):
    """The configured sandbox cannot work on this machine."""


@dataclass(frozen=True)
class Sandbox:
    """How processes of agents and gates are confined. `kind` is "bwrap" or "off"."""

    kind: str
    bwrap: str | None = None
    # The repository (main checkout): read-only whatever else is writable, and visible even when it
    # lives under the private /tmp (tests and demos keep it there).
    visible: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def confines(self) -> bool:
        return self.kind == "bwrap"

    def describe(self) -> str:
        if not self.confines:
            return 'off: agents and gates run unconfined (sandbox = "off")'
        return (f"bubblewrap ({self.bwrap}): agents and gates write only their worktree, their own data "
                "directories and a private /tmp; nothing they start outlives them")

    def wrap(self, argv: Sequence[str], *, cwd: Path | str | None, writable: Sequence[Path | str] = ()) -> list[str]:
        """`argv` as run in the sandbox (unchanged when off). `cwd` is writable, and so is `writable`."""
        if not self.confines:
            return list(argv)
        assert self.bwrap is not None
        out = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", str(PRIVATE_TMP)]
        rw = [Path(p) for p in ([cwd] if cwd is not None else []) + list(writable)]
        rw = [_real(p) for p in rw if p is not None]
        # What lives under /tmp is hidden by the private /tmp: show again, read-only, what is needed
        # (the repository, the program and the files its command line names), then the writable
        # places over it.
        ro = [*self.visible, *_runner_paths()]
        exe = executables.find(argv[0], cwd if cwd is not None else ".", expand_user=False) if argv else None
        if exe:
            ro.append(_real(Path(exe)).parent)
            interpreter = _shebang(Path(exe))  # a script's interpreter may live under /tmp too
            if interpreter is not None:
                ro.append(_real(interpreter).parent)
        ro += [_real(Path(a)) for a in argv[1:] if os.path.isabs(a) and os.path.exists(a)]
        for path in _outermost(p for p in ro if _under(p, PRIVATE_TMP) and p.exists()):
            out += ["--ro-bind", str(path), str(path)]
        for path in _outermost(rw):
            path.mkdir(parents=True, exist_ok=True)
            out += ["--bind", str(path), str(path)]
        # A writable directory around the repository (agent.writable = ["~"], say) must not make the
        # main checkout writable: read-only again, then what is writable inside it (the worktree).
        for repo in self.visible:
            if any(_under(repo, w) for w in rw):
                out += ["--ro-bind", str(repo), str(repo)]
                for path in _outermost(w for w in rw if _under(w, repo) and w != repo):
                    out += ["--bind", str(path), str(path)]
        if cwd is not None:
            dotgit = _real(Path(cwd)) / ".git"
            if dotgit.is_file():  # a worktree's pointer into the main .git: not the agent's to rewrite
                out += ["--ro-bind", str(dotgit), str(dotgit)]
            out += ["--chdir", str(_real(Path(cwd)))]
        out += ["--setenv", "TMPDIR", str(PRIVATE_TMP), "--unshare-pid", "--die-with-parent", "--", *argv]
        return out


OFF = Sandbox("off")


def _runner_paths() -> list[Path]:
    """beads-runner's own installation: its checkout (the pinned opencode in node_modules, the tools
    `make tools` built) and the Python it runs on. A checkout under /tmp would otherwise be hidden."""
    paths = [Path(__file__).resolve().parents[1], Path(sys.prefix), Path(sys.base_prefix)]
    return [_real(p) for p in paths if p.exists()]


def _shebang(path: Path) -> Path | None:
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    if not words:
        return None
    interpreter = Path(os.fsdecode(words[0]))
    return interpreter if interpreter.is_absolute() and interpreter.exists() else None


def _real(path: Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _outermost(paths) -> list[Path]:
    """Distinct paths, outer ones first, in an order where a parent is bound before what lies inside it."""
    return sorted(set(paths), key=lambda p: (len(p.parts), str(p)))


@functools.cache
def _bwrap_works(bwrap: str) -> str | None:
    """None if bubblewrap can build our sandbox here, else why not (user namespaces off, no setuid…)."""
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--unshare-pid", "--die-with-parent", "--", "true"]
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return None


def resolve(mode: str, repo: Path | None = None) -> Sandbox:
    """The sandbox `mode` gives on this machine; SandboxUnavailable if it cannot work here."""
    if mode == "off":
        return OFF
    if mode not in MODES:
        raise SandboxUnavailable(f"sandbox = {mode!r} is not one of {', '.join(MODES)}",
                                 fix='set sandbox = "auto" (or "bwrap", or "off") in .beads-runner.toml')
    bwrap = executables.on_path("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(f'sandbox = "{mode}": bubblewrap (bwrap) is not installed, and no other sandbox '
                                 "can confine the agent and its gates here", fix=INSTALL_FIX)
    why = _bwrap_works(bwrap)
    if why is not None:
        raise SandboxUnavailable(f'sandbox = "{mode}": bubblewrap cannot run here: {why}',
                                 fix="allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) "
                                     f"or run as a user that may use them; or {INSTALL_FIX.split(', or ', 1)[1]}")
    visible = (_real(repo),) if repo is not None else ()
    return Sandbox("bwrap", bwrap, visible)


# The sandbox of this process, set by `start`/`worker` before any step runs (like procreg's directory).
_active: Sandbox = OFF
_lock = threading.Lock()


def configure(sandbox: Sandbox) -> None:
    global _active
    with _lock:
        _active = sandbox


def active() -> Sandbox:
    return _active


def wrap(argv: Sequence[str], *, cwd: Path | str | None, writable: Sequence[Path | str] = ()) -> list[str]:
    """`argv` as the active sandbox runs it."""
    return _active.wrap(argv, cwd=cwd, writable=writable)
