"""Errors the runner raises on purpose.

Every error a user can meet carries the problem *and* the fix, so the CLI can print both
without a traceback.
"""

from __future__ import annotations


class RunnerError(Exception):
    """Base of every deliberate error: `str(err)` is the problem, `err.fix` the remedy."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message

    def render(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message


class ConfigError(RunnerError):
    """The configuration file is missing, unreadable or invalid."""


class UnsafeIdError(RunnerError):
    """An issue id cannot safely name a branch or a path; it is never used."""


class TrackerError(RunnerError):
    """The tracker refused or failed a call. `retryable` says whether a retry can help."""

    retryable = False


class TrackerBusy(TrackerError):
    """A transient failure (lock contention, garbled output): retry."""

    retryable = True


class TrackerUnavailable(TrackerError):
    """The tracker cannot be used at all (bd missing, no beads database)."""


class IssueNotFound(TrackerError):
    """The tracker has no issue with that id."""


class ClaimConflict(TrackerError):
    """Somebody else holds the issue."""


class AgentUnavailable(RunnerError):
    """The agent executable cannot be found or started."""


class GitError(RunnerError):
    """A git operation failed in a way the runner cannot work around."""
