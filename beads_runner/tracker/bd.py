"""`BdTracker`: the `Tracker` protocol over the real `bd` CLI (beads 1.0.x).

Every call is `[command, *args, "--json", "--actor", actor]`, stdin closed, cwd the repo, with a
timeout. Calls are serialised per repo, inside the process (a lock per repo) and across
processes (`<repo>/.beads-runner/bd.lock`), because bd's embedded store takes one writer at a time.
Verified with bd v1.0.5 (tests/contract): it waits for a store another process holds, and says
"locked by another dolt process" when stopped during that wait. `TrackerBusy` failures (lock
errors, such a stopped wait, garbled output) are retried with backoff before they surface.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tenacity
from filelock import FileLock, Timeout

from beads_runner import executables
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

STOP_GRACE = 5.0  # seconds a bd past tracker.timeout gets, after SIGTERM, to say what it was waiting for

CLAIM_READ_BACK_REUSE = 2.0  # seconds a claim's read-back may answer the one next `show` of that issue
OWN_CHANGE_SLACK_NS = 50_000_000  # file mtimes are coarse (a clock tick): a window edge is this wide

_repo_locks: dict[str, tuple[threading.Lock, FileLock]] = {}
# Per repository, the (start, end) wall-clock times of this process's recent bd calls, end None while
# one runs: `changed_store_at` tells the daemon which changes under .beads/ its own calls made.
_own_calls: dict[str, collections.deque[list[int | None]]] = {}
# Per repository, issue id → (monotonic time, Issue) of a claim's read-back, taken by the next show.
_read_backs: dict[str, dict[str, tuple[float, Issue]]] = {}
_repo_locks_guard = threading.Lock()


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


def _calls_for(repo: Path) -> collections.deque[list[int | None]]:
    key = str(repo.resolve())
    with _repo_locks_guard:
        if key not in _own_calls:
            _own_calls[key] = collections.deque(maxlen=64)
        return _own_calls[key]


def _read_backs_for(repo: Path) -> dict[str, tuple[float, Issue]]:
    key = str(repo.resolve())
    with _repo_locks_guard:
        return _read_backs.setdefault(key, {})


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

    def executable(self) -> str:
        """The bd executable this tracker runs (tracker.command, resolved), or TrackerUnavailable."""
        command = self.command
        found = executables.find(command, self.repo, path=(self.env.get("PATH") or os.environ.get("PATH")))
        path = executables.as_path(command, self.repo)
        if found is None and path is not None:
            raise TrackerUnavailable(f"the bd executable {str(path)!r} (tracker.command) does not exist or "
                                     "is not executable", fix=INSTALL_FIX)
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
                returncode, stdout, stderr = self._call(argv, env, name)
            finally:
                file_lock.release()
        data = parse.check_output(name, returncode, stdout, stderr, expect_json=expect_json and not raw)
        return stdout if raw else data

    def _call(self, argv: list[str], env: dict[str, str] | None, name: str) -> tuple[int, str, str]:
        """One bd process to its end: (exit code, stdout, stderr), or the error of one that could not
        start or did not finish within the timeout."""
        started_ns = time.time_ns()
        try:
            # Its own session: Ctrl-C or SIGTERM to the runner's process group must not kill a bd
            # write halfway (the runner finishes the call, then stops).
            proc = subprocess.Popen(argv, cwd=self.repo, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            raise TrackerUnavailable(f"`{name}` could not start: {argv[0]!r} does not exist", fix=INSTALL_FIX) from None
        except PermissionError as exc:
            raise TrackerUnavailable(f"`{name}` could not start: {exc}", fix=INSTALL_FIX) from None
        window: list[int | None] = [started_ns, None]
        calls = _calls_for(self.repo)
        calls.append(window)
        try:
            out, err = proc.communicate(timeout=self.timeout)
            return proc.returncode, _text(out), _text(err)
        except subprocess.TimeoutExpired:
            pass
        finally:
            window[1] = time.time_ns()
        # Past the timeout, bd is nearly always waiting for the embedded store while another
        # process (a person's bd, another tool) holds it: bd 1.0.x waits without a deadline. SIGTERM
        # ends the wait and bd says so ("... locked by another dolt process"): it wrote nothing, so
        # the call is retried like any lock error. Without those words it may have been halfway
        # through a write: that is reported, never retried blindly.
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        said = "\n".join(t.strip() for t in (_text(err), _text(out)) if t.strip())
        if parse.is_busy_text(said):
            raise TrackerBusy(
                f"`{name}` waited {self.timeout:g}s for the beads store, which another process holds: "
                f"{parse.quote(said)}",
                fix="retried; if it persists, find the process holding .beads/ (a long bd command, a stuck bd)",
            )
        error = TrackerBusy(f"`{name}` did not finish within {self.timeout:g}s and was stopped",
                            fix="raise tracker.timeout, or look for a bd process holding the store")
        error.timed_out = True  # type: ignore[attr-defined]
        raise error

    def _run(self, args: Sequence[str], *, tail: Sequence[str] = (), expect_json: bool = True,
             retry_garbage: bool = True, raw: bool = False) -> Any:
        """Run `bd <args> --json --actor <actor> [-- <tail>]`, retrying TrackerBusy a few times."""
        argv = [self.executable(), *args, "--json", "--actor", self.actor]
        if tail:
            argv += ["--", *tail]
        name = parse.describe_command(["bd", *args, *tail])

        def worth_retrying(exc: BaseException) -> bool:
            # A call stopped past its timeout may have been halfway through a write: never repeated.
            return (isinstance(exc, TrackerBusy) and not getattr(exc, "timed_out", False)
                    and (retry_garbage or "not JSON" not in exc.message))

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(worth_retrying), stop=tenacity.stop_after_attempt(self.busy_attempts),
            wait=tenacity.wait_exponential(multiplier=self.busy_backoff), sleep=time.sleep, reraise=True)
        try:
            return retrying(self._once, argv, name, expect_json, raw)
        except TrackerBusy as exc:
            tries = retrying.statistics.get("attempt_number", 1)
            if tries > 1 and (getattr(exc, "timed_out", False) or tries == self.busy_attempts):
                exc.message = f"{exc.message} (after {tries} calls)"
                exc.args = (exc.message,)
            raise

    def changed_store_at(self, mtime_ns: int) -> bool:
        """A file under .beads/ modified at `mtime_ns` was (very likely) this runner's own doing: it
        falls inside one of this process's bd calls on the repository (bd 1.0.x touches its store
        even when it only reads). Another process's write outside those windows is not."""
        slack = OWN_CHANGE_SLACK_NS
        now = time.time_ns()
        for start, end in list(_calls_for(self.repo)):
            if start is not None and start - slack <= mtime_ns <= (end if end is not None else now) + slack:
                return True
        return False

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

    def store_mode(self) -> str:
        """Where this bd keeps its issues: "embedded" (Dolt in-process, one writer at a time: the
        runner serialises its calls and retries lock errors) or "server host:port" (a dolt
        sql-server). From `bd dolt show --json` (bd 1.x); "unknown" on a bd without it."""
        try:
            return parse.parse_store_mode(self._run(["dolt", "show"]))
        except (TrackerUnavailable, TrackerBusy):
            raise
        except TrackerError:
            return "unknown"

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
        # The claim's read-back, milliseconds old, answers the check-deps read that follows a claim:
        # one bd call less on the way from ready to a session (each costs ~0.3 s with the real bd).
        fresh = _read_backs_for(self.repo).pop(issue_id, None)  # dict.pop is atomic
        if fresh is not None and time.monotonic() - fresh[0] <= CLAIM_READ_BACK_REUSE:
            return fresh[1]
        name = parse.describe_command(["bd", "show", issue_id])
        found = parse.first(parse.issues_from_data(self._run(["show", issue_id]), name), issue_id)
        if found is None:
            raise IssueNotFound(f"`{name}` printed no issue", fix="check the id with `bd list`")
        return found

    def _verify_claim(self, issue_id: str) -> Issue:
        self._forget(issue_id)
        issue = self.show(issue_id)
        if issue.status != "in_progress" or issue.assignee != self.actor:
            raise ClaimConflict(
                f"claimed {issue_id} but reading it back shows status {issue.status!r}, assignee "
                f"{issue.assignee or '(none)'!r} instead of in_progress for {self.actor!r}: someone else won",
                fix="leave it to its holder; the runner will pick other ready work",
            )
        _read_backs_for(self.repo)[issue_id] = (time.monotonic(), issue)
        return issue

    def _forget(self, issue_id: str) -> None:
        """A write to the issue makes a remembered read-back stale."""
        _read_backs_for(self.repo).pop(issue_id, None)

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
        self._forget(issue_id)
        self._run(["update", "--status", "open", "--assignee", ""], tail=[self._any_id(issue_id)])

    def close(self, issue_id: str, reason: str) -> Issue:
        issue_id = self._id(issue_id)
        self._forget(issue_id)
        # bd closes a closed issue again, replacing its reason and closed_at (v1.0.5): read first,
        # so a close the runner repeats after a crash, or a person's own close, keeps its reason.
        current = self.show(issue_id)
        if current.status == "closed":
            return current
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
        self._forget(issue_id)
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
        self._forget(issue_id)
        self._run(["update", "--status", "blocked", "--add-label", NEEDS_HUMAN_LABEL], tail=[self._any_id(issue_id)])

    def give_back(self, issue_id: str) -> None:
        self._run(["update", "--status", "open", "--assignee", "", "--remove-label", NEEDS_HUMAN_LABEL],
                  tail=[self._any_id(issue_id)])
