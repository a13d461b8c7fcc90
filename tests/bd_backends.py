"""The two bds the suite runs against: the real one (beads v1.0.5, built by `make tools`) and the
stand-in (tests/fakes/bd). Both are driven the same way: a workspace per test (a git repository
with `bd init` done), raw CLI calls for setting up and for pinning the contract, and the runner's
own `BdTracker` for what the runner really calls.

The real bd runs with HOME set to a temporary directory, BD_NON_INTERACTIVE=1 and Dolt's usage
metrics off, so a test never reads or writes the user's configuration or touches the network.
`bd init` costs the real bd a few seconds, so a workspace is initialised once per session and
copied for each test (the copy is a workspace of its own: nothing in `.beads/` names its path).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterator

from beads_runner.tracker.bd import BdTracker
from tests.fakes.bd_standin import fast_bin_dir, standin_env
from tests.helpers import new_repo

PREFIX = "tt"
# Variables that would make bd look elsewhere or print another shape than the tests expect.
_SCRUBBED = ("BEADS_DIR", "BD_JSON_ENVELOPE", "BD_ACTOR", "BEADS_ACTOR", "BD_STANDIN_VERSION",
             "BD_STANDIN_FAULTS", "BD_STANDIN_LOCK", "BD_STANDIN_HOLD", "BD_STANDIN_LOG")


@dataclass
class BdBackend:
    """One bd: how to run it and how to make a workspace for it."""

    name: str  # "real" or "standin": the pytest id
    executable: Path
    env: dict[str, str]
    _template: Path | None = field(default=None, repr=False)

    @property
    def is_real(self) -> bool:
        return self.name == "real"

    # -- raw CLI ---------------------------------------------------------------------------------

    def run(self, repo: Path, *args: str, check: bool = True, actor: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`bd <args>` in `repo`, stdin closed; fails the test on a non-zero exit when `check`."""
        argv = [str(self.executable), *args]
        if actor:
            argv += ["--actor", actor]
        proc = subprocess.run(argv, cwd=repo, env=env or self.env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, check=False, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name} bd {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def json(self, repo: Path, *args: str, actor: str | None = None) -> Any:
        return json.loads(self.run(repo, *args, "--json", actor=actor).stdout)

    def create(self, repo: Path, title: str, *flags: str, actor: str | None = None) -> str:
        """`bd create <title> <flags> --silent`: the new id."""
        issue_id = self.run(repo, "create", title, *flags, "--silent", actor=actor).stdout.strip()
        assert issue_id and "\n" not in issue_id, issue_id
        return issue_id

    def show(self, repo: Path, issue_id: str) -> dict[str, Any]:
        shown = self.json(repo, "show", issue_id)
        return shown[0] if isinstance(shown, list) else shown

    # -- workspaces and trackers --------------------------------------------------------------------

    def init_args(self, prefix: str) -> list[str]:
        if self.is_real:
            return ["init", "--quiet", "--skip-hooks", "--skip-agents", "-p", prefix]
        return ["init", "--quiet", "--prefix", prefix]

    def fresh_workspace(self, path: Path, prefix: str = PREFIX) -> Path:
        """A new git repository at `path` with `bd init` done in it (nothing committed)."""
        new_repo(path)
        self.run(path, *self.init_args(prefix))
        return path

    def workspace(self, path: Path, template_dir: Path) -> Path:
        """A workspace at `path`: a copy of one made once under `template_dir` (prefix `tt`)."""
        if self._template is None:
            self._template = self.fresh_workspace(template_dir / f"template-{self.name}")
        shutil.copytree(self._template, path, symlinks=True)
        return path

    def store_lock_file(self, repo: Path) -> Path:
        """The file whose exclusive flock makes this bd's store busy for every other process."""
        if self.is_real:
            return real_store_lock_file(repo)
        return repo / ".beads" / "issues.jsonl.lock"

    @contextlib.contextmanager
    def hold_store(self, repo: Path) -> Iterator[None]:
        """Hold the store's lock, as a concurrent writer would, for the duration of the block."""
        path = self.store_lock_file(repo)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the flock

    def tracker(self, repo: Path, actor: str = "runner", **kwargs: Any) -> BdTracker:
        """The runner's tracker over this bd, as `make_tracker` builds it (plus test env)."""
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("busy_backoff", 0.05)
        return BdTracker(repo, command=str(self.executable), actor=actor, env=self.env, **kwargs)


def real_store_lock_file(repo: Path) -> Path:
    """The real bd's store lock: embedded Dolt's `noms/LOCK` of the workspace's one database. While
    another process holds it, bd v1.0.5 waits (Dolt retries the open with backoff, no deadline)."""
    found = sorted((repo / ".beads" / "embeddeddolt").glob("*/.dolt/noms/LOCK"))
    assert len(found) == 1, f"expected one embedded Dolt database under {repo}/.beads, found {found}"
    return found[0]


def real_bd_env(home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the real bd runs in under test: its own HOME, non-interactive, no metrics."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _SCRUBBED}
    home.mkdir(parents=True, exist_ok=True)
    env.update({
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "BD_NON_INTERACTIVE": "1",
        "DOLT_METRICS_DISABLED": "1",  # the embedded Dolt engine otherwise reports usage events
        "GIT_AUTHOR_NAME": "Test User", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test User", "GIT_COMMITTER_EMAIL": "test@example.com",
    })
    return env


def real_backend(executable: Path, home: Path) -> BdBackend:
    return BdBackend("real", Path(executable), real_bd_env(home))


def standin_backend() -> BdBackend:
    env = {k: v for k, v in standin_env().items() if k not in _SCRUBBED}
    return BdBackend("standin", fast_bin_dir() / "bd", env)
