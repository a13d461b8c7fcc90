"""Landing: the issue branch's one commit onto the target, fast-forward only, under a lock.

If the target moved, the branch is rebased and the gates run again before the target moves; with
`land.push`, the target is the remote's and a rejected push means fetch, rebase, re-gate, push
again. A checkout of the target with uncommitted changes, or files landing would overwrite, is
never touched. `Workspace` (workspace.py) has these methods; they use its git and names.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from beads_runner.errors import GitError
from beads_runner.ids import require_safe_issue_id

NEVER_COMMIT = (".beads", ".beads-runner")  # the tracker's own files and the runner's state


class LandingRefused(GitError):
    """Landing cannot happen without a person (dirty target checkout, rebase conflict)."""


@dataclass(frozen=True)
class Landed:
    sha: str
    target: str
    already: bool  # the target already had it (a re-run after a crash)
    rebased: bool


def never_commit(path: str) -> bool:
    """Whether a path (as git prints it) is one the runner never commits."""
    path = path.strip().strip('"')
    return any(path == p or path.startswith(p + "/") for p in NEVER_COMMIT)


class Landing:
    """The landing half of `Workspace`."""

    def landed_commit(self, issue_id: str) -> str | None:
        """The issue's commit if the target (the remote's, when pushing) already has it."""
        self.fetch()
        return self.find_commit(issue_id, self.base)

    def land(self, issue_id: str, regate: Callable[[Path], tuple[bool, str]] | None = None) -> Landed:
        """Put the issue branch's commit on the target, fast-forward only, under the landing lock.

        If the target moved since the branch was made, the branch is rebased and `regate`
        (the quality gates) runs again on the result before the target moves. A checkout of the
        target with uncommitted changes is never touched: landing is refused and the branch kept.
        With `push`, the target is the remote's: a push rejected because someone else pushed first
        means fetch, rebase, re-gate and push again."""
        with FileLock(str(self._lock_path("land.lock"))):
            if self.push:
                return self._land_by_push(issue_id, regate)
            landed = self.find_commit(issue_id, self.base)
            if landed:
                return Landed(landed, self.target, already=True, rebased=False)
            target_sha = self.check_target()
            rebased = self._rebase_onto(issue_id, target_sha, regate)
            sha = self.git("rev-parse", self.branch(issue_id))
            self._fast_forward(sha, target_sha)
            return Landed(sha, self.target, already=False, rebased=rebased)

    PUSH_TRIES = 5

    def _land_by_push(self, issue_id: str, regate: Callable[[Path], tuple[bool, str]] | None) -> Landed:
        rebased = False
        for _ in range(self.PUSH_TRIES):
            target_sha = self.check_target()  # fetches
            landed = self.find_commit(issue_id, self.base)
            if landed:
                self._follow_remote(landed)
                return Landed(landed, self.target, already=True, rebased=rebased)
            rebased = self._rebase_onto(issue_id, target_sha, regate) or rebased
            sha = self.git("rev-parse", self.branch(issue_id))
            try:
                # Not forced: the remote accepts only a fast-forward of what we rebased onto.
                self.git("push", "-q", self.remote, f"{sha}:refs/heads/{self.target}")
            except GitError as exc:
                if any(w in exc.message for w in ("rejected", "fetch first", "non-fast-forward", "stale info")):
                    continue  # someone else landed first: fetch, rebase, re-gate, push again
                raise
            self.fetch()
            self._follow_remote(sha)
            return Landed(sha, self.target, already=False, rebased=rebased)
        raise LandingRefused(f"pushing {self.target} to {self.remote} was rejected {self.PUSH_TRIES} times in a row",
                             fix="the remote's target moves too fast or refuses pushes; the next attempt tries again")

    def _follow_remote(self, sha: str) -> None:
        """Move the local target to what was pushed, if that is a fast-forward and its checkout is clean;
        otherwise leave it (the remote is the truth when pushing)."""
        local = self.rev(f"refs/heads/{self.target}")
        if local is None or local == sha:
            return
        try:
            self.git("merge-base", "--is-ancestor", local, sha)
            self._fast_forward(sha, local)
        except GitError:
            pass

    def _rebase_onto(self, issue_id: str, target_sha: str, regate: Callable[[Path], tuple[bool, str]] | None) -> bool:
        """Rebase the issue branch onto `target_sha` if it is not on it already, then re-run the gates."""
        path = self.worktree_path(issue_id)
        branch = self.branch(issue_id)
        pending = self._lock_path("regate") / require_safe_issue_id(issue_id)
        if self.git("merge-base", branch, target_sha) == target_sha:
            # On the target already. If that is from a rebase whose re-gate never finished (a stop, a
            # crash, a failing gate), the tree was never gated: gate it now, before it can land.
            if pending.exists() and regate is not None:
                self._regate(issue_id, path, branch, regate, pending)
                return True
            pending.unlink(missing_ok=True)
            return False
        # Recorded before the rebase, removed only once the gates pass on the rebased tree.
        pending.parent.mkdir(parents=True, exist_ok=True)
        pending.write_text(target_sha + "\n", encoding="utf-8")
        try:
            # --autostash: what the gates left in the worktree must not stop the rebase
            self.git("rebase", "-q", "--autostash", target_sha, cwd=path)
        except GitError as exc:
            try:
                self.git("rebase", "--abort", cwd=path)
            except GitError:
                pass
            raise LandingRefused(
                f"{branch} does not rebase cleanly onto {self.target}: {exc.message}",
                fix=f"resolve it by hand in {path} (git rebase {self.target}), then land it",
            ) from None
        if regate is not None:
            self._regate(issue_id, path, branch, regate, pending)
        else:
            pending.unlink(missing_ok=True)
        return True

    def _regate(self, issue_id: str, path: Path, branch: str, regate: Callable[[Path], tuple[bool, str]],
                pending: Path) -> None:
        tree = self.git("rev-parse", f"{branch}^{{tree}}")
        passed, summary = regate(path)
        if not passed:
            raise LandingRefused(f"after rebasing onto {self.target} the gates fail: {summary}",
                                 fix=f"fix the branch {branch} in {path}")
        if self.git("rev-parse", f"{branch}^{{tree}}") != tree:
            raise LandingRefused(f"{branch} changed while the gates ran on it; it was not landed",
                                 fix="the next attempt gates it again")
        pending.unlink(missing_ok=True)

    def _lock_path(self, name: str) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self.state_dir / name

    def _target_checkout(self) -> Path | None:
        """The worktree that has the target branch checked out, if any."""
        out = self.git("worktree", "list", "--porcelain")
        current: Path | None = None
        for line in out.splitlines():
            if line.startswith("worktree "):
                current = Path(line.removeprefix("worktree "))
            elif line == f"branch refs/heads/{self.target}":
                return current
        return None

    def _fast_forward(self, sha: str, expected_old: str) -> None:
        checkout = self._target_checkout()
        if checkout is None:
            # Compare-and-swap: fails if someone else moved the target in the meantime.
            self.git("update-ref", f"refs/heads/{self.target}", sha, expected_old)
            return
        dirty = [line[3:] for line in self.git("status", "--porcelain", "--untracked-files=no",
                                                cwd=checkout).splitlines()
                 if not never_commit(line[3:])]
        if dirty:
            raise LandingRefused(
                f"the checkout of {self.target} at {checkout} has uncommitted changes "
                f"({', '.join(dirty[:5])}{' …' if len(dirty) > 5 else ''}); it was not touched",
                fix=f"commit or stash them, then the next attempt lands {sha[:10]}",
            )
        # git overwrites an ignored file without a word when the change adds that path (after un-ignoring
        # it): a file the owner keeps there must never be lost to a landing.
        added = [p for p in self.git("diff", "--no-renames", "--name-only", "-z", "--diff-filter=AT", expected_old,
                                     sha).split("\0") if p]
        kept = [p for p in added if os.path.lexists(checkout / p)]
        if kept:
            raise LandingRefused(
                f"landing would overwrite {len(kept)} untracked or ignored file(s) in the checkout of {self.target} "
                f"at {checkout} ({', '.join(kept[:5])}{' …' if len(kept) > 5 else ''}); it was not touched",
                fix=f"move those files away (they are yours, not the change's), then the next attempt lands {sha[:10]}",
            )
        self.git("merge", "--ff-only", "-q", sha, cwd=checkout)
