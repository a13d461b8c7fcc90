"""`BdTracker`: the `Tracker` protocol over the real `bd` CLI (beads 1.0.x).

Every call is `[command, *args, "--json", "--actor", actor]`, stdin closed, cwd the repo, with a
timeout. Calls are serialised per repo, inside the process (a lock per repo) and across
processes (`<repo>/.beads-runner/bd.lock`), because concurrent bd calls on one embedded store
produce lock errors. `TrackerBusy` failures are retried a few times before they surface.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from beads_runner.config import STATE_DIR
from beads_runner.ids import is_safe_issue_id
from beads_runner.errors import ClaimConflict, IssueNotFound, TrackerBusy, TrackerError, TrackerUnavailable
from beads_runner.tracker import parse
from beads_runner.tracker.base import NEEDS_HUMAN_LABEL, Issue

MAX_COMMENT_CHARS = 60_000  # one argv element must stay below the kernel's 128 KiB limit
INSTALL_FIX = (
    "install beads' `bd` (`npm install -g @beads/bd`, `brew install beads`, or "
    "`go install github.com/steveyegge/beads/cmd/bd@latest`), or set tracker.command in "
    ".beads-runner.toml to the bd executable's path"
)

_repo_locks: dict[str, tuple[threading.Lock, FileLock]] = {}
_repo_locks_guard = threading.Lock()


def _locks_for(repo: Path) -> tuple[threading.Lock, FileLock]:
    key = str(repo.resolve())
    with _repo_locks_guard:
        if key not in _repo_locks:
            state = repo / STATE_DIR
            state.mkdir(parents=True, exist_ok=True)
            _repo_locks[key] = (threading.Lock(), FileLock(str(state / "bd.lock"), thread_local=False))
        return _repo_locks[key]


class BdTracker:
    """The beads tracker through `bd --json`. One issue id per call, always."""

    def __init__(
        self,
        repo: Path,
        command: str = "bd",
        actor: str = "beads-runner",
        timeout: float = 60.0,
        *,
        env: Mapping[str, str] | None = None,
        busy_attempts: int = 4,
        busy_backoff: float = 0.2,
    ):
        self.repo = Path(repo)
        self.command = command
        self.actor = actor
        self.timeout = timeout
        self.env = dict(env) if env else {}
        self.busy_attempts = max(1, busy_attempts)
        self.busy_backoff = busy_backoff
        self._version: str | None = None

    # -- running bd ---------------------------------------------------------------------------

    def _executable(self) -> str:
        command = self.command
        if os.sep in command or (os.altsep and os.altsep in command):
            path = Path(command).expanduser()
            if not path.is_absolute():
                path = self.repo / path
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
            raise TrackerUnavailable(f"the bd executable {str(path)!r} (tracker.command) does not exist or "
                                     "is not executable", fix=INSTALL_FIX)
        found = shutil.which(command, path=(self.env.get("PATH") or os.environ.get("PATH")))
        if not found:
            raise TrackerUnavailable(f"the bd executable {command!r} (tracker.command) was not found on PATH",
                                     fix=INSTALL_FIX)
        return found

    def _once(self, argv: list[str], name: str, expect_json: bool, raw: bool = False) -> Any:
        env = {**os.environ, **self.env} if self.env else None
        thread_lock, file_lock = _locks_for(self.repo)
        with thread_lock:
            try:
                file_lock.acquire(timeout=self.timeout)
            except Timeout:
                raise TrackerBusy(f"`{name}` did not run: another process held {file_lock.lock_file} for "
                                  f"{self.timeout:g}s", fix="check for a stuck beads-runner or bd process") from None
            try:
                # Its own session: Ctrl-C or SIGTERM to the runner's process group must not kill a bd
                # write halfway (the runner finishes the call, then stops).
                proc = subprocess.run(
                    argv, cwd=self.repo, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                    timeout=self.timeout, check=False, start_new_session=True,
                )
            except FileNotFoundError:
                raise TrackerUnavailable(f"`{name}` could not start: {argv[0]!r} does not exist",
                                         fix=INSTALL_FIX) from None
            except PermissionError as exc:
                raise TrackerUnavailable(f"`{name}` could not start: {exc}", fix=INSTALL_FIX) from None
            except subprocess.TimeoutExpired:
                error = TrackerBusy(f"`{name}` did not finish within {self.timeout:g}s and was stopped",
                                    fix="raise tracker.timeout, or look for a bd process holding the store")
                error.timed_out = True  # type: ignore[attr-defined]
                raise error from None
            finally:
                file_lock.release()
        stdout = proc.stdout.decode("utf-8", errors="replace")
        stderr = proc.stderr.decode("utf-8", errors="replace")
        data = parse.check_output(name, proc.returncode, stdout, stderr, expect_json=expect_json and not raw)
        return stdout if raw else data

    def _run(self, args: Sequence[str], *, tail: Sequence[str] = (), expect_json: bool = True,
             retry_garbage: bool = True, raw: bool = False) -> Any:
        """Run `bd <args> --json --actor <actor> [-- <tail>]`, retrying TrackerBusy a few times."""
        argv = [self._executable(), *args, "--json", "--actor", self.actor]
        if tail:
            argv += ["--", *tail]
        name = parse.describe_command(["bd", *args, *tail])
        delay = self.busy_backoff
        for attempt in range(1, self.busy_attempts + 1):
            try:
                return self._once(argv, name, expect_json, raw)
            except TrackerBusy as exc:
                if getattr(exc, "timed_out", False) or attempt == self.busy_attempts:
                    if attempt > 1:
                        exc.message = f"{exc.message} (after {attempt} attempts)"
                        exc.args = (exc.message,)
                    raise
                if not retry_garbage and "not JSON" in exc.message:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    @staticmethod
    def _id(issue_id: str) -> str:
        if not isinstance(issue_id, str) or not issue_id.strip() or issue_id.startswith("-"):
            raise IssueNotFound(f"refusing to pass the issue id {issue_id!r} to bd: it is empty or looks like a flag")
        return issue_id

    @staticmethod
    def _any_id(issue_id: str) -> str:
        """An id passed only after `--` (where bd cannot read it as a flag): any non-empty text will do,
        so that even an issue whose id looks like a flag (`-`, `--help`) gets its comment and goes to
        a person instead of being left in progress."""
        if not isinstance(issue_id, str) or not issue_id.strip() or "\x00" in issue_id:
            raise IssueNotFound(f"refusing to pass the issue id {issue_id!r} to bd: it is empty or holds a NUL")
        return issue_id

    # -- Tracker ------------------------------------------------------------------------------

    def version(self) -> str:
        """bd's version from `bd version --json` (any JSON shape, or plain text), cached."""
        if self._version is None:
            self._version = parse.parse_version(self._run(["version"], raw=True))
        return self._version

    def _version_at_least(self, *wanted: int) -> bool:
        try:
            return parse.at_least(self.version(), *wanted)
        except TrackerUnavailable:
            raise
        except TrackerError:
            return False

    def ready(self, limit: int = 0) -> list[Issue]:
        args = ["ready", "--limit", str(max(0, int(limit)))]
        if self._version_at_least(0, 63):
            args += ["--exclude-type", "epic"]
        issues = parse.issues_from_data(self._run(args), parse.describe_command(["bd", *args]))
        return [issue for issue in issues if issue.is_work]

    def show(self, issue_id: str) -> Issue:
        issue_id = self._id(issue_id)
        name = parse.describe_command(["bd", "show", issue_id])
        found = parse.first(parse.issues_from_data(self._run(["show", issue_id]), name), issue_id)
        if found is None:
            raise IssueNotFound(f"`{name}` printed no issue", fix="check the id with `bd list`")
        return found

    def _verify_claim(self, issue_id: str) -> Issue:
        issue = self.show(issue_id)
        if issue.status != "in_progress" or issue.assignee != self.actor:
            raise ClaimConflict(
                f"claimed {issue_id} but reading it back shows status {issue.status!r}, assignee "
                f"{issue.assignee or '(none)'!r} instead of in_progress for {self.actor!r}: someone else won",
                fix="leave it to its holder; the runner will pick other ready work",
            )
        return issue

    def claim(self, issue_id: str) -> Issue:
        issue_id = self._id(issue_id)
        self._run(["update", issue_id, "--claim"])
        return self._verify_claim(issue_id)

    def claim_next(self) -> Issue | None:
        """Claim the first ready work issue and read it back; None when nothing is claimable."""
        if self._version_at_least(1, 0, 4):
            args = ["ready", "--claim", "--exclude-type", "epic"]
            try:
                claimed = parse.issues_from_data(self._run(args), parse.describe_command(["bd", *args]))
            except parse.UnknownFlag:
                claimed = None  # a build that reports a newer version than it is: claim the old way
            if claimed == []:
                return None
            if claimed:
                issue = claimed[0]
                if not is_safe_issue_id(issue.id):
                    return issue  # claimed, and unusable: the daemon refuses it (a comment, to a person)
                if issue.is_work:
                    return self._verify_claim(issue.id)
                self.release(issue.id)  # an infrastructure issue slipped through: give it back
        for candidate in self.ready():
            if candidate.assignee and candidate.assignee != self.actor:
                continue
            try:
                return self.claim(candidate.id)
            except (ClaimConflict, IssueNotFound):
                continue
        return None

    def claimed(self) -> list[Issue]:
        """Issues in progress under this actor (to take back claims a dead runner left)."""
        args = ["list", "--status", "in_progress", "--limit", "0"]
        issues = parse.issues_from_data(self._run(args), parse.describe_command(["bd", *args]))
        return [issue for issue in issues if issue.assignee == self.actor]

    def release(self, issue_id: str) -> None:
        self._run(["update", "--status", "open", "--assignee", ""], tail=[self._any_id(issue_id)])

    def close(self, issue_id: str, reason: str) -> Issue:
        issue_id = self._id(issue_id)
        args = ["close", issue_id, "--reason", reason]
        name = parse.describe_command(["bd", *args])
        try:
            data = self._run(args)
        except (TrackerUnavailable, IssueNotFound, TrackerBusy, parse.CloseBlocked):
            raise
        except TrackerError:
            current = self.show(issue_id)
            if current.status == "closed":
                return current
            raise
        found = parse.first(parse.issues_from_data(data, name), issue_id)
        return found if found is not None and found.status == "closed" else self.show(issue_id)

    def comment(self, issue_id: str, text: str) -> None:
        issue_id = self._any_id(issue_id)
        text = text.replace("\x00", "")
        if len(text) > MAX_COMMENT_CHARS:
            text = text[: MAX_COMMENT_CHARS - 40] + "\n\n[comment truncated by beads-runner]"
        # The text goes after `--`, so a text starting with '-' is never read as a flag. Exit 0
        # means bd stored it: unreadable stdout then is not retried (a retry would post it twice).
        self._run(["comments", "add"], tail=[issue_id, text], expect_json=False, retry_garbage=False)

    def comments(self, issue_id: str) -> list[dict[str, Any]]:
        issue_id = self._id(issue_id)
        name = parse.describe_command(["bd", "comments", issue_id])
        return parse.comments_from_data(self._run(["comments", issue_id]), name)

    def hand_to_human(self, issue_id: str) -> None:
        self._run(["update", "--status", "blocked", "--add-label", NEEDS_HUMAN_LABEL], tail=[self._any_id(issue_id)])
