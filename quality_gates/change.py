"""The change under review, read from git: every file the worktree differs in from the merge-base with
the target, committed or not, untracked included (ignored files excluded), with line counts and added lines.

git runs through `beads_runner.gitcmd` (argv, no shell, no hooks), not the runner's Workspace.
"""

from __future__ import annotations

import codecs
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from beads_runner.gitcmd import GitNotRun, GitStopped, run_git

GIT_TIMEOUT = 120.0
SNIFF_BYTES = 8000  # git's own test for binary content: a NUL byte in the first 8000 bytes
CHUNK = 1 << 20
OVERLAP = 4096  # chunks of a streamed file overlap, so a secret across a chunk border is still whole in one


class ChangeError(Exception):
    """The change cannot be read (not a git repository, unknown target, git failing)."""


def git(workdir: Path, *args: str, timeout: float = GIT_TIMEOUT) -> str:
    """Run git in `workdir` (the runner's one git runner: no hook runs, a baseline `worktree add`
    would run post-checkout, nor an fsmonitor); its stdout, or ChangeError with git's message."""
    try:
        result = run_git(args, cwd=workdir, env={"GIT_OPTIONAL_LOCKS": "0"}, config=("-c", "core.quotepath=off"),
                         timeout=timeout)
    except (GitNotRun, GitStopped) as exc:
        raise ChangeError(f"git {' '.join(args[:2])} failed: {exc}") from None
    if not result.ok:
        msg = result.stderr.decode("utf-8", "replace").strip() or f"exit {result.returncode}"
        raise ChangeError(f"git {' '.join(args[:2])} failed: {msg}")
    return result.stdout.decode("utf-8", "surrogateescape")


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
    added: int = 0  # lines (also of files .gitattributes marks binary or -diff: git is told --text)
    deleted: int = 0
    binary: bool = False  # by content: a NUL byte in its first 8000 bytes, whatever .gitattributes says
    kind: str = "file"  # what would be committed: "file", "symlink", "submodule", "deleted", "other"
    link: str = ""  # a symlink's target, as written
    size: int = 0  # bytes of what would be committed


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
            tracked = [f for f in self.files if f.status != "D" and not isinstance(f, _Untracked)]
            if tracked:
                # --text: what .gitattributes marks binary or -diff is shown all the same. Binary content
                # is left out of the patch (it could be huge): untracked_chunks reads it in bounded chunks.
                skip = [f":(exclude,literal){f.path}" for f in tracked if f.binary]
                patch = git(self.workdir, "diff", "--no-renames", "--no-color", "--no-ext-diff", "--no-textconv",
                            "--text", "-U0", self.base, "--", ".", *skip)
                out.update(_parse_added(patch))
            self._added_lines = out
        return self._added_lines

    def untracked_chunks(self) -> Iterator[tuple[str, int, str]]:
        """(path, number of the chunk's first line, text) of every new untracked regular file and every
        changed binary one, all of it, in overlapping chunks (bounded memory, whatever the size; NUL
        bytes or not). Symlinks are never followed."""
        for f in self.files:
            if f.kind == "file" and (isinstance(f, _Untracked) or f.binary):
                newlines = 0  # in the bytes before this chunk's new part
                for carried, chunk in _chunks(self.workdir / f.path, None, OVERLAP):
                    first_line = 1 + newlines - chunk[:carried].count(b"\n")
                    newlines += chunk[carried:].count(b"\n")
                    yield f.path, first_line, chunk.decode("utf-8", "replace")


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
    gitlinks = set()  # submodule entries (mode 160000) the change adds or keeps
    raw = git(workdir, "diff", "--no-renames", "--raw", "-z", base, "--").split("\0")
    for meta, path in zip(raw[0::2], raw[1::2], strict=False):
        if meta.startswith(":") and meta[1:].split(" ")[1:2] == ["160000"]:
            gitlinks.add(path)
    # --text: line counts also for files .gitattributes marks binary or -diff (which hid them).
    for record in git(workdir, "diff", "--no-renames", "--no-ext-diff", "--no-textconv", "--text", "--numstat",
                      "-z", base, "--").split("\0"):
        if not record:
            continue
        added, deleted, path = record.split("\t", 2)
        counted = added != "-"
        status = statuses.get(path, "M")
        kind, link, size, binary = _inspect(workdir, path) if status != "D" else ("deleted", "", 0, False)
        if path in gitlinks:
            kind = "submodule"
        files[path] = FileChange(path, status, int(added) if counted else 0, int(deleted) if counted else 0,
                                 binary, kind, link, size)
    # Text that .gitattributes calls binary or -diff: numstat says "-" even with --text, the patch does not.
    hidden = [f.path for f in files.values() if f.added == f.deleted == 0 and f.kind == "file" and not f.binary]
    if hidden:
        patch = git(workdir, "diff", "--no-renames", "--no-color", "--no-ext-diff", "--no-textconv", "--text", "-U0",
                    base, "--", *[f":(literal){p}" for p in hidden])
        for path, (plus, minus) in _count_patch(patch).items():
            if path in files:
                f = files[path]
                files[path] = FileChange(f.path, f.status, plus, minus, f.binary, f.kind, f.link, f.size)
    for path in git(workdir, "ls-files", "--others", "--exclude-standard", "-z").split("\0"):
        if path and path not in files:
            files[path] = _untracked(workdir, path)
    return Change(workdir, target, base, sorted(files.values(), key=lambda f: f.path))


def _inspect(workdir: Path, path: str) -> tuple[str, str, int, bool]:
    """(kind, symlink target, size, binary) of what `git add` would take from `path`, never following
    a symlink and never reading more than SNIFF_BYTES."""
    full = workdir / path.rstrip("/")
    try:
        st = os.lstat(full)
    except OSError:
        return "deleted", "", 0, False
    if stat.S_ISLNK(st.st_mode):
        link = os.readlink(full)
        return "symlink", link, len(link), False
    if stat.S_ISDIR(st.st_mode):
        return ("submodule" if os.path.lexists(full / ".git") else "other"), "", 0, False
    if not stat.S_ISREG(st.st_mode):
        return "other", "", 0, False
    head = next(read_chunks(full, limit=SNIFF_BYTES), b"")
    return "file", "", st.st_size, b"\0" in head


def _untracked(workdir: Path, path: str) -> FileChange:
    kind, link, size, binary = _inspect(workdir, path)
    if kind != "file" or binary:
        return _Untracked(path, "A", binary=binary, kind=kind, link=link, size=size)
    lines = 0
    for chunk in read_chunks(workdir / path, overlap=0):
        lines += chunk.count(b"\n")
    return _Untracked(path, "A", added=lines, kind=kind, size=size)


def read_chunks(path: Path, *, limit: int | None = None, overlap: int = OVERLAP) -> Iterator[bytes]:
    """A regular file's bytes in chunks of CHUNK (each starting `overlap` bytes before the previous one
    ended), at most `limit` bytes in all. Never follows a symlink, never blocks on a FIFO or a device:
    anything but a regular file yields nothing."""
    for _, chunk in _chunks(path, limit, overlap):
        yield chunk


def _chunks(path: Path, limit: int | None, overlap: int) -> Iterator[tuple[int, bytes]]:
    """read_chunks, with how many bytes at the start of each chunk were carried over from the last."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        carry = b""
        left = limit
        while left is None or left > 0:
            data = os.read(fd, CHUNK if left is None else min(CHUNK, left))
            if not data:
                break
            if left is not None:
                left -= len(data)
            yield len(carry), carry + data
            carry = (carry + data)[-overlap:] if overlap else b""
    except OSError:
        return
    finally:
        os.close(fd)


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def _count_patch(patch: str) -> dict[str, tuple[int, int]]:
    """path → (lines added, lines deleted) in a -U0 patch."""
    counts: dict[str, list[int]] = {}
    current: list[int] | None = None
    in_hunk = False
    for line in patch.split("\n"):
        if line.startswith("diff --git "):
            current, in_hunk = None, False
        elif not in_hunk and line.startswith("+++ "):
            name = _unquote(line[4:].rstrip("\t"))
            current = None if name == "/dev/null" else counts.setdefault(name.removeprefix("b/"), [0, 0])
        elif not in_hunk and line.startswith("--- "):
            continue
        elif line.startswith("@@"):
            in_hunk = True
        elif in_hunk and current is not None and line[:1] in ("+", "-"):
            current[0 if line[0] == "+" else 1] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


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
