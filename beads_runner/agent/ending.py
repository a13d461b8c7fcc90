"""Why a session ended badly, in the words every agent kind reports (`SessionResult.reason`).

All three agents (`command`, opencode `run`, opencode `server`) end a session for the same causes:
a provider's limit, `agent.timeout`, `agent.stall_timeout`, a cancel. They differ only in what
they call the agent's silence ("no output from opencode", "no event from the opencode server")
and how the session was ended ("killed" a process, "aborted" a server session). One function
words them, so that `explain`, the issue comments and the tests see one phrasing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CANCELLED = "session cancelled"


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Ending:
    """How a session that did not succeed is reported: its reason, and whether a retry may help."""

    reason: str
    retryable: bool


def limit_ending(limit: Any) -> Ending:
    """The provider refused the session (its quota, the credentials): `limit` is a `limits.Limit`."""
    return Ending(f"the provider refused the session ({limit.kind}): {limit.message[:200]}", True)


def supervisor_ending(*, timed_out: bool, stalled: bool, cancelled: bool, timeout: float, stall_timeout: float,
                      silent: str, ended: str) -> Ending | None:
    """The ending the runner itself imposed, or None: the session ended by itself.

    silent: what was missing during a stall ("output from opencode"); ended: what the runner did
    ("killed", "aborted")."""
    if timed_out:
        return Ending(f"session exceeded agent.timeout ({fmt_seconds(timeout)}) and was {ended}", True)
    if stalled:
        return Ending(f"no {silent} for {fmt_seconds(stall_timeout)} (agent.stall_timeout); session {ended}", True)
    if cancelled:
        return Ending(CANCELLED, False)
    return None
