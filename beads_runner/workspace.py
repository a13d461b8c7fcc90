"""Git: one worktree and branch per issue, one commit with trailers, landing on the target branch.

Git owns the work. Every operation here is idempotent, so a step re-run after a crash finds
what was already done (the worktree with the agent's edits, the commit carrying the issue's
trailer, the target already containing it) and goes on from there.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import git
from filelock import FileLock

from beads_runner.errors import GitError
from beads_runner.landing import NEVER_COMMIT, Landing, never_commit
from beads_runner.landing import Landed, LandingRefused  # noqa: F401 - the names callers know from here
from beads_runner.gitcmd import GitNotRun, GitStopped, run_git
from beads_runner.ids import require_safe_issue_id
from beads_runner.safe_text import SUBJECT_TITLE_MAX, one_line, printable
from quality_gates.change import read_chunks

BRANCH_PREFIX = "beads-runner/"
_FALLBACK_IDENTITY = {"GIT_AUTHOR_NAME": "beads-runner", "GIT_AUTHOR_EMAIL": "beads-runner@localhost",
                      "GIT_COMMITTER_NAME": "beads-runner", "GIT_COMMITTER_EMAIL": "beads-runner@localhost"}


_step = threading.local()  # .cancel: the Event of the step this thread runs, if any


@contextmanager
def cancel_with(cancel: threading.Event | None) -> Iterator[None]:
    """While the block runs, a git call of this thread ends (GitError) once `cancel` is set: a step's
    timeout or a stop ends the step even when git blocks."""
    previous = getattr(_step, "cancel", None)
    _step.cancel = cancel
    try:
        yield
    finally:
        _step.cancel = previous


class WorktreeBusy(GitError):
    """Another runner (alive, if stopped) works in the issue's worktree: one worktree, one agent."""


def trailer_message(title: str, issue_id: str, body: str, trailers: dict[str, str]) -> str:
    """`<title> (<id>)`, a body, then `Key: value` trailers; newlines in values are flattened. The
    title is untrusted: no control characters, at most SUBJECT_TITLE_MAX characters."""
    subject = f"{one_line(title, SUBJECT_TITLE_MAX) or '(no title)'} ({issue_id})"
    lines = [subject, ""]
    if body.strip():
        lines += [printable(body, keep_newlines=True).strip(), ""]
    lines += [f"{k}: {one_line(v, 1000)}" for k, v in trailers.items()]
    return "\n".join(lines) + "\n"


class Workspace(Landing):
    """The repository the runner works on, seen through the target branch."""

    # Worktree add/remove touch shared files under .git: one at a time per process (and the
    # file lock below for other processes).
    _admin_lock = threading.Lock()

    def __init__(self, repo_root: Path, target: str = "main", state_dir: Path | None = None, *,
                 push: bool = False, remote: str = "origin"):
        self.root = Path(repo_root).resolve()
        try:
            self.repo = git.Repo(self.root)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise GitError(f"{self.root} is not a git repository",
                           fix=f"run beads-runner inside a git repository (or `git init {self.root}`)") from None
        self.target = target
        # push: many machines share a remote; work starts from and lands on the remote's target.
        self.push = push
        self.remote = remote
        self.state_dir = state_dir or self.root / ".beads-runner"
        self.worktrees_dir = self.state_dir / "worktrees"
        self._env = self._identity_env()

    # --- names -----------------------------------------------------------------------------
    @property
    def base(self) -> str:
        """The ref the work starts from and lands on: the local target, or the remote's when pushing."""
        return f"refs/remotes/{self.remote}/{self.target}" if self.push else f"refs/heads/{self.target}"

    def fetch(self) -> None:
        if self.push:
            self.git("fetch", "-q", self.remote, f"+refs/heads/{self.target}:{self.base}")

    def branch(self, issue_id: str) -> str:
        return BRANCH_PREFIX + require_safe_issue_id(issue_id)

    def worktree_path(self, issue_id: str) -> Path:
        return self.worktrees_dir / require_safe_issue_id(issue_id)

    # --- plumbing --------------------------------------------------------------------------
    def _identity_env(self) -> dict[str, str]:
        """Use the user's git identity; fall back to the runner's own only where none is set."""
        reader = self.repo.config_reader()
        env = {}
        if not reader.has_option("user", "name") and "GIT_AUTHOR_NAME" not in os.environ:
            env.update({k: v for k, v in _FALLBACK_IDENTITY.items() if k.endswith("NAME")})
        if not reader.has_option("user", "email") and "GIT_AUTHOR_EMAIL" not in os.environ:
            env.update({k: v for k, v in _FALLBACK_IDENTITY.items() if k.endswith("EMAIL")})
        return env

    def git(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        """Run git (argv, no shell) in `cwd` (default: the repo root); raise GitError on failure.

        Never run: repository hooks, an fsmonitor, a prompt for credentials. A call blocked in git (a
        filter, a remote that never answers) ends when the step running it is cancelled (its timeout,
        a stop): see `cancel_with`."""
        where = cwd or self.root
        try:
            result = run_git(args, cwd=where, env={**self._env, **(env or {})}, cancel=getattr(_step, "cancel", None))
        except GitNotRun as exc:
            raise GitError(f"cannot run git: {exc}", fix="install git and make sure it is on PATH") from None
        except GitStopped:
            raise GitError(f"git {' '.join(args[:3])} was stopped: the step was cancelled or timed out "
                           "while git ran", fix=f"if git blocks in {where} (a filter, a remote that never "
                           "answers), fix that; the next attempt runs it again") from None
        if result.ok:
            return result.text()
        detail = result.message()
        fix = None
        if "index.lock" in detail:
            lock = re.search(r"'([^']*index\.lock)'", detail)
            fix = (f"another git process is running in {cwd or self.root}, or one was killed and left "
                   f"{lock.group(1) if lock else 'its index.lock'}: if no git is running there, delete that file")
        raise GitError(f"git {' '.join(args[:3])} failed: {detail}", fix=fix)

    def _admin(self) -> FileLock:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.state_dir / "git-admin.lock"))

    def rev(self, ref: str) -> str | None:
        try:
            return self.git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        except GitError:
            return None

    def check_target(self) -> str:
        if self.push:
            self.fetch()
            sha = self.rev(self.base)
            if sha is None:
                raise GitError(f"the remote {self.remote!r} has no branch {self.target!r}",
                               fix=f"push it first (git push {self.remote} {self.target}) or fix [land] remote/target")
            return sha
        sha = self.rev(f"refs/heads/{self.target}")
        if sha is None:
            raise GitError(f"the target branch {self.target!r} does not exist in {self.root}",
                           fix=f"create it (git branch {self.target}) or set [land] target in .beads-runner.toml")
        return sha

    def root_commit(self) -> str:
        """The first commit of the target's history: the same in every clone of this repository.
        Asked by every Hatchet client and engine adapter a process builds: read from git once."""
        cached = getattr(self, "_root_commit", None)
        if cached is not None:
            return cached
        roots = self.repo.git.rev_list("--max-parents=0", self.base if self.push else self.target).split()
        if not roots:
            raise GitError(f"the target branch {self.target!r} has no commits", fix="commit something first")
        self._root_commit: str = sorted(roots)[0]
        return self._root_commit

    # --- worktrees -------------------------------------------------------------------------
    def ensure_worktree(self, issue_id: str) -> Path:
        """The issue's worktree on its branch, created from the target if new. An existing one is
        reused as it is: an interrupted attempt's edits are the next attempt's starting point."""
        path = self.worktree_path(issue_id)
        branch = self.branch(issue_id)
        with self._admin_lock, self._admin():
            if (path / ".git").exists() and self._worktree_branch(path) == branch:
                return path
            if (path / ".git").is_file() and self._repair(path) == branch:
                return path  # its .git file had been rewritten (by an unconfined agent): git rewrote it back
            self.git("worktree", "prune")
            self.worktrees_dir.mkdir(parents=True, exist_ok=True)
            if path.exists() and not any(path.iterdir()):
                path.rmdir()
            if path.exists():
                raise GitError(f"{path} exists but is not the worktree of {branch}",
                               fix=f"move it away (it may hold work), then run again: mv {path} {path}.old")
            if self.rev(f"refs/heads/{branch}"):
                self.git("worktree", "add", str(path), branch)
            else:
                self.check_target()
                self.git("worktree", "add", "-q", "--no-track", "-b", branch, str(path), self.base)
        return path

    def _repair(self, path: Path) -> str | None:
        """`git worktree repair` for a worktree whose `.git` file no longer points at its admin entry;
        the branch it is on afterwards (None: not repaired)."""
        admin = self.root / ".git" / "worktrees" / path.name
        if not (admin / "gitdir").is_file():
            return None
        try:
            (path / ".git").write_text(f"gitdir: {admin}\n", encoding="utf-8")
            self.git("worktree", "repair", str(path))
        except (OSError, GitError):
            return None
        return self._worktree_branch(path)

    @contextmanager
    def worktree_lock(self, issue_id: str) -> Iterator[None]:
        """Held while an agent or the gates work in the issue's worktree. A runner stopped (SIGSTOP)
        past its lease still holds it, so a second runner resuming the step never starts a second
        agent there; a dead runner's lock is released by the kernel."""
        directory = self._lock_path("worktree-locks")
        directory.mkdir(exist_ok=True)
        fd = os.open(directory / f"{require_safe_issue_id(issue_id)}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorktreeBusy(f"another runner still works in the worktree of {issue_id} (it holds its lock, "
                               "perhaps stopped): one worktree, one agent",
                               fix="if that runner is stopped (SIGSTOP), continue (SIGCONT) or end it; this step "
                                   "is tried again") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _worktree_branch(self, path: Path) -> str | None:
        try:
            return self.git("symbolic-ref", "--short", "HEAD", cwd=path)
        except GitError:
            return None

    def remove_worktree(self, issue_id: str, delete_branch: bool = True) -> None:
        path = self.worktree_path(issue_id)
        with self._admin_lock, self._admin():
            if path.exists():
                self.git("worktree", "remove", "--force", str(path))
            self.git("worktree", "prune")
            branch = self.branch(issue_id)
            if delete_branch and self.rev(f"refs/heads/{branch}"):
                # -d, not -D: only a branch the target contains is deleted; anything else stays.
                try:
                    self.git("branch", "-d", branch)
                except GitError:
                    pass

    # --- inspecting the work ---------------------------------------------------------------
    def changed_files(self, issue_id: str) -> list[str]:
        """Files the issue's work changes relative to the target: committed or not, tracked or new."""
        path = self.worktree_path(issue_id)
        base = self.git("merge-base", "HEAD", self.base, cwd=path)
        names = set(filter(None, self.git("diff", "--name-only", "-z", base, cwd=path).split("\0")))
        names |= set(filter(None, self.git("ls-files", "--others", "--exclude-standard", "-z",
                                           cwd=path).split("\0")))
        return sorted(n for n in names if not never_commit(n))

    def snapshot(self, issue_id: str) -> dict[str, str | None]:
        """Each changed file and a hash of its content (None: deleted): to tell who changed what."""
        path = self.worktree_path(issue_id)
        out: dict[str, str | None] = {}
        for name in self.changed_files(issue_id):
            out[name] = content_hash(path / name)
        return out

    def tree_id(self, issue_id: str) -> str:
        """The git tree of the worktree as it is now (uncommitted and untracked files included), computed
        in a throwaway index: equal ids mean byte-for-byte the same work."""
        path = self.worktree_path(issue_id)
        with tempfile.TemporaryDirectory(dir=self.state_dir) as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.git("read-tree", "HEAD", cwd=path, env=env)
            self.git("add", "-A", "--", ".", *[f":(exclude){p}" for p in NEVER_COMMIT], cwd=path, env=env)
            return self.git("write-tree", cwd=path, env=env)

    def find_commit(self, issue_id: str, ref: str, since: str | None = None) -> str | None:
        """The newest commit on `ref` (after `since`) whose `Beads-Issue` trailer is this issue."""
        rng = f"{since}..{ref}" if since else ref
        out = self.git("log", rng, "--format=%H%x00%(trailers:key=Beads-Issue,valueonly,separator=%x2C)")
        for line in out.splitlines():
            sha, _, ids = line.partition("\x00")
            if issue_id in (i.strip() for i in ids.split(",")):
                return sha
        return None

    # --- commit ----------------------------------------------------------------------------
    def commit(self, issue_id: str, message: str, paths: list[str] | None = None) -> str:
        """One commit on the issue branch holding all of the agent's work, then HEAD's sha.

        `paths`: the files the agent changed (None: every change in the worktree), so that what the
        gates left behind (caches, coverage data) is never committed. If the agent committed on its
        own, its commits are folded into this one, so the target receives exactly one commit per
        issue. Re-running after a crash finds the commit made."""
        path = self.worktree_path(issue_id)
        base = self.git("merge-base", "HEAD", self.base, cwd=path)
        head = self.git("rev-parse", "HEAD", cwd=path)
        if head != base and self.find_commit(issue_id, "HEAD", since=base) == head and not self._dirty(path, paths):
            return head  # already committed (a re-run)
        if head != base:
            self.git("reset", "--soft", base, cwd=path)
        # What the agent staged or committed itself under .beads/ or .beads-runner/ is never committed.
        self.git("reset", "-q", base, "--", *NEVER_COMMIT, cwd=path)
        if paths is None:
            self.git("add", "-A", "--", ".", *[f":(exclude){p}" for p in NEVER_COMMIT], cwd=path)
        elif paths:
            self._add_paths(path, [p for p in paths if not never_commit(p)])
        if not self.git("diff", "--cached", "--name-only", cwd=path):
            raise GitError(f"nothing to commit for {issue_id}: the work has no changes outside "
                           f"{', '.join(NEVER_COMMIT)}")
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".msg", dir=self.state_dir,
                                         delete=False) as fh:
            fh.write(message)
        try:
            self.git("commit", "--no-verify", "-q", "--cleanup=verbatim", "-F", fh.name, cwd=path)
        finally:
            os.unlink(fh.name)
        return self.git("rev-parse", "HEAD", cwd=path)

    def _add_paths(self, worktree: Path, paths: list[str]) -> None:
        """`git add -A` of exactly these paths (taken literally, NUL-separated: any name is safe).

        A tracked file under an ignored directory (changed or deleted) is added with `-f`: plain `git
        add` refuses it with git's "paths are ignored" hint. An untracked one that an ignore rule now
        covers (the agent ignored it meanwhile) is left out, as `git add -A .` would."""
        tracked = set(self._ls_files(worktree, paths, "--cached"))
        addable = set(self._ls_files(worktree, [p for p in paths if p not in tracked], "--others",
                                     "--exclude-standard"))
        for force, chosen in ((True, [p for p in paths if p in tracked]), (False, [p for p in paths if p in addable])):
            if not chosen:
                continue
            with self._pathspec_file(chosen) as spec:
                self.git("add", "-A", *(["-f"] if force else []), f"--pathspec-from-file={spec}",
                         "--pathspec-file-nul", cwd=worktree, env={"GIT_LITERAL_PATHSPECS": "1"})

    def _ls_files(self, worktree: Path, paths: list[str], *which: str) -> list[str]:
        found: list[str] = []
        for i in range(0, len(paths), 500):  # ls-files takes no pathspec file: arguments, in chunks
            out = self.git("ls-files", "-z", *which, "--", *paths[i:i + 500], cwd=worktree,
                           env={"GIT_LITERAL_PATHSPECS": "1"})
            found += [name for name in out.split("\0") if name]
        return found

    @contextmanager
    def _pathspec_file(self, paths: list[str]) -> Iterator[str]:
        with tempfile.NamedTemporaryFile("wb", suffix=".paths", dir=self.state_dir, delete=False) as fh:
            fh.write(b"\0".join(p.encode("utf-8", "surrogateescape") for p in paths))
        try:
            yield fh.name
        finally:
            os.unlink(fh.name)

    def _dirty(self, path: Path, paths: list[str] | None = None) -> bool:
        out = self.git("status", "--porcelain", "-z", "--untracked-files=all", cwd=path)
        wanted = None if paths is None else set(paths)
        entries = [e[3:] for e in out.split("\0") if len(e) > 3]
        return any(not never_commit(e) and (wanted is None or e in wanted) for e in entries)


def content_hash(path: Path) -> str | None:
    """A hash of what git would take from `path` (None: nothing there). A symlink is its target, never
    followed; a FIFO or a device is never opened; a file is read in chunks, so any size is fine."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    digest = hashlib.sha1()
    if stat.S_ISLNK(st.st_mode):
        digest.update(b"link\0" + os.fsencode(os.readlink(path)))
    elif stat.S_ISREG(st.st_mode):
        for chunk in read_chunks(path, overlap=0):
            digest.update(chunk)
    else:
        return None
    return digest.hexdigest()

