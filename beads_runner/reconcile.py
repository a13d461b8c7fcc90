"""A person's word wins: a run whose issue a person closed, took over, deferred or deleted stops.

The tracker owns task state. While a run is in flight the runner keeps asking it whether the issue
is still ours (in progress, assigned to the runner's actor). If not, the run is *superseded*: its
session's process group is killed, nothing lands, the branch is kept, and the issue is left exactly
as the person set it (no release, no comment, no `needs-human`). Superseded is not a failure.

The watch lives with the step (not the daemon), so it works the same on either engine and on any
Hatchet worker: each `tracker.poll_interval` while the process step runs, and right before landing.
"""

from __future__ import annotations

import threading
import time

import structlog

from beads_runner.errors import IssueNotFound, TrackerError
from beads_runner.tracker.base import Issue

log = structlog.get_logger("beads_runner.reconcile")


def superseded_reason(issue: Issue, actor: str) -> str | None:
    """Why the issue is no longer the runner's to work on; None while it is (in progress, ours)."""
    if issue.status == "in_progress" and issue.assignee == actor:
        return None
    holder = f" (assignee {issue.assignee})" if issue.assignee else ""
    if issue.status == "closed":
        return f"a person closed the issue{holder}" + (f": {issue.close_reason}" if issue.close_reason else "")
    if issue.status == "deferred":
        return f"a person deferred the issue{holder}"
    if issue.status == "tombstone":
        return "the issue was deleted"
    if issue.assignee and issue.assignee != actor:
        return f"the issue was assigned to {issue.assignee} (status {issue.status})"
    return f"the issue is {issue.status}{holder}, no longer claimed by {actor}"


def check_issue(tracker, issue_id: str) -> str | None:
    """Read the issue now: the reason it is superseded, or None (ours, or the tracker could not say)."""
    try:
        issue = tracker.show(issue_id)
    except IssueNotFound:
        return "the issue was deleted"
    except TrackerError as exc:  # busy, unavailable: no news is not a person's word; ask again later
        log.warning("could not re-read the issue, will ask again", issue_id=issue_id, error=exc.message)
        return None
    return superseded_reason(issue, tracker.actor)


class IssueWatch:
    """While a step runs: `stop` is set when the engine cancels the step or a person takes the issue.

    Pass `stop` (not the engine's cancel) to the agent and the gates; afterwards `reason` says whether
    the issue was superseded (and why)."""

    def __init__(self, tracker, issue_id: str, *, interval: float, cancel: threading.Event | None = None):
        self.tracker = tracker
        self.issue_id = issue_id
        self.interval = interval
        self.cancel = cancel
        self.stop = threading.Event()
        self.reason: str | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def check_now(self) -> str | None:
        if self.reason is None and (why := check_issue(self.tracker, self.issue_id)):
            self.reason = why
            self.stop.set()
        return self.reason

    def _loop(self) -> None:
        next_read = time.monotonic() + self.interval  # the caller checks once before entering
        while not self._done.wait(0.1):
            if self.cancel is not None and self.cancel.is_set():
                self.stop.set()
            now = time.monotonic()
            if now >= next_read:
                next_read = now + self.interval
                if self.check_now():
                    log.info("run superseded by a person", issue_id=self.issue_id, reason=self.reason)
                    return

    def __enter__(self) -> IssueWatch:
        self._thread = threading.Thread(target=self._loop, name=f"watch-{self.issue_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
