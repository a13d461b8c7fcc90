"""The change under review, read from git: every file the worktree differs in from the merge-base with
the target, committed or not, untracked included (ignored files excluded), with line counts and added lines.

Plain `git` subprocesses (argv, no shell), so the gates do not depend on the runner's Workspace.
"""

from __future__ import annotations

import codecs
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

GIT_TIMEOUT = 120.0
MAX_SCAN_BYTES = 2_000_000  # untracked files larger than this are counted, not read


class ChangeError(Exception):
    """The change cannot be read (not a git repository, unknown target, git failing)."""


def git(workdir: Path, *args: str, timeout: float = GIT_TIMEOUT) -> str:
    """Run git in `workdir`; its stdout, or ChangeError with git's message."""
    # No repository hook runs (a baseline `worktree add` would run post-checkout), nor an fsmonitor.
    argv = ["git", "-c", "core.quotepath=off", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
            *args]
    try:
        proc = subprocess.run(argv, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ChangeError(f"git {' '.join(args[:2])} failed: {exc}") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip() or f"exit {proc.returncode}"
        raise ChangeError(f"git {' '.join(args[:2])} failed: {msg}")
    return proc.stdout.decode("utf-8", "surrogateescape")


def resolve_target(workdir: Path, target: str) -> str:
    """The commit of `target`: the ref as given, else `origin/<target>` (a CI checkout has only that)."""
    for ref in (target, f"origin/{target}"):
        try:
            return git(workdir, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
        except ChangeError:
            continue
    raise ChangeError(f"the target {target!r} is not a commit in {workdir} (nor is origin/{target})")


def merge_base(workdir: Path, target: str) -> str:
    sha = resolve_target(workdir, target)
    try:
        return git(workdir, "merge-base", "HEAD", sha).strip()
    except ChangeError as exc:
        raise ChangeError(f"HEAD and {target!r} have no common ancestor: {exc}") from None


@dataclass(frozen=True)
class FileChange:
    path: str
    status: str  # "A" added (untracked included), "M" modified, "D" deleted, "T" type change
    added: int = 0  # lines; 0 for binary files
    deleted: int = 0
    binary: bool = False


@dataclass
class Change:
    workdir: Path
    target: str
    base: str  # the merge-base commit the change is measured from
    files: list[FileChange]
    _added_lines: dict[str, list[tuple[int, str]]] | None = field(default=None, repr=False)

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    def added_lines(self) -> dict[str, list[tuple[int, str]]]:
        """path → [(line number in the new file, text)] of every added line (binary files excluded)."""
        if self._added_lines is None:
            out: dict[str, list[tuple[int, str]]] = {}
            tracked = [f for f in self.files if f.status != "D" and not f.binary and not isinstance(f, _Untracked)]
            if tracked:
                patch = git(self.workdir, "diff", "--no-renames", "--no-color", "--no-ext-diff", "-U0", self.base,
                            "--")
                out.update(_parse_added(patch))
            for f in self.files:
                if isinstance(f, _Untracked) and not f.binary:
                    text = _read_text(self.workdir / f.path)
                    if text is not None:
                        out[f.path] = list(enumerate(text.splitlines(), start=1))
            self._added_lines = out
        return self._added_lines


@dataclass(frozen=True)
class _Untracked(FileChange):
    untracked: bool = True


def read_change(workdir: Path, target: str) -> Change:
    """Everything `workdir` changes relative to its merge-base with `target`."""
    workdir = Path(workdir)
    base = merge_base(workdir, target)
    statuses: dict[str, str] = {}
    fields_ = git(workdir, "diff", "--no-renames", "--name-status", "-z", base, "--").split("\0")
    for status, path in zip(fields_[0::2], fields_[1::2], strict=False):
        if path:
            statuses[path] = status[:1]
    files: dict[str, FileChange] = {}
    for record in git(workdir, "diff", "--no-renames", "--numstat", "-z", base, "--").split("\0"):
        if not record:
            continue
        added, deleted, path = record.split("\t", 2)
        binary = added == "-"
        files[path] = FileChange(path, statuses.get(path, "M"), 0 if binary else int(added),
                                 0 if binary else int(deleted), binary)
    for path in git(workdir, "ls-files", "--others", "--exclude-standard", "-z").split("\0"):
        if path and path not in files:
            files[path] = _untracked(workdir, path)
    return Change(workdir, target, base, sorted(files.values(), key=lambda f: f.path))


def _untracked(workdir: Path, path: str) -> FileChange:
    full = workdir / path
    try:
        size = full.stat().st_size
        if size > MAX_SCAN_BYTES:
            return _Untracked(path, "A", binary=True)
        data = full.read_bytes()
    except OSError:
        return _Untracked(path, "A", binary=True)
    if b"\0" in data[:8192]:
        return _Untracked(path, "A", binary=True)
    return _Untracked(path, "A", added=len(data.decode("utf-8", "replace").splitlines()))


def _read_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()[:MAX_SCAN_BYTES]
    except OSError:
        return None
    return None if b"\0" in data[:8192] else data.decode("utf-8", "replace")


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def _unquote(name: str) -> str:
    if name.startswith('"') and name.endswith('"'):
        raw = codecs.escape_decode(name[1:-1].encode("utf-8", "surrogateescape"))[0]
        return raw.decode("utf-8", "replace")
    return name


def _parse_added(patch: str) -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    current: list[tuple[int, str]] | None = None
    line_no = 0
    for line in patch.split("\n"):
        if line.startswith("diff --git "):
            current = None
        elif line.startswith("+++ "):
            name = _unquote(line[4:].rstrip("\t"))
            current = None if name == "/dev/null" else out.setdefault(name.removeprefix("b/"), [])
        elif line.startswith("@@"):
            m = _HUNK.match(line)
            line_no = int(m.group(1)) if m else 0
        elif current is not None and line.startswith("+"):
            current.append((line_no, line[1:]))
            line_no += 1
    return out


@contextmanager
def temporary_worktree(repo: Path, commit: str) -> Iterator[Path]:
    """A detached worktree of `commit` in a temporary directory, removed (with its git admin entry) afterwards."""
    holder = Path(tempfile.mkdtemp(prefix="beads-runner-baseline-"))
    tree = holder / "tree"
    try:
        git(repo, "worktree", "add", "--detach", "--quiet", str(tree), commit)
    except ChangeError:
        shutil.rmtree(holder, ignore_errors=True)
        raise
    try:
        yield tree
    finally:
        try:
            git(repo, "worktree", "remove", "--force", str(tree))
        except ChangeError:
            shutil.rmtree(tree, ignore_errors=True)
            try:
                git(repo, "worktree", "prune")
            except ChangeError:
                pass
        shutil.rmtree(holder, ignore_errors=True)


def repo_toplevel(workdir: Path) -> Path:
    return Path(git(workdir, "rev-parse", "--show-toplevel").strip())
