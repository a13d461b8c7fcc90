"""What the runner needs from a coding agent: run one session in a worktree, report how it went.

The agent only edits files. Whether the work is done is decided by the runner (diff, gates), so a
`SessionResult` reports facts about the session, never a verdict on the task.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field


class TokenUsage(BaseModel):
    """The tokens of one agent session (or a sum of them): the only token-count type of the runner
    (`costs.Usage` adds the dollars and the step count to it)."""

    total: int = 0
    input: int = 0
    output: int = 0
    reasoning: int = 0
    cache_read: int = 0
    cache_write: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        """The sum, of this one's type (a `costs.Usage` plus a `costs.Usage` keeps its cost and steps)."""
        fields = type(self).model_fields
        return type(self)(**{k: getattr(self, k) + getattr(other, k, 0) for k in fields})


class ProviderRetry(BaseModel):
    """The model provider failed and opencode will try again (agent.mode = "server" only: `run`
    does not show it). A quota that is used up shows as a run of these with the provider's message."""

    attempt: int = 0  # opencode's retry count (its own word), 1 for the first retry; not an engine attempt
    message: str = ""  # the provider's error message, e.g. "Rate limit exceeded (HTTP 429)"
    next_at: float | None = None  # when opencode tries again (Unix seconds)


class SessionRequest(BaseModel):
    issue_id: str
    prompt: str  # goes to the agent on stdin, never on a command line
    workdir: Path  # the issue's worktree
    title: str = ""  # a short session title (opencode --title)
    session_id: str | None = None  # continue this earlier session instead of starting one
    log_path: Path | None = None  # where to append the raw event stream (NDJSON)


class SessionResult(BaseModel):
    ok: bool  # exit 0, no error event, last step finished with "stop" (opencode's rules)
    reason: str = ""  # one line: why not ok ("" when ok)
    retryable: bool = True  # whether another attempt could help
    exit_code: int | None = None
    session_id: str | None = None
    summary: str = ""  # the agent's final text, for the commit body
    tokens: TokenUsage = Field(default_factory=TokenUsage)
    cost: float = 0.0
    duration_s: float = 0.0
    events: int = 0
    timed_out: bool = False
    stalled: bool = False
    cancelled: bool = False
    output_tail: str = ""  # the last lines of the agent's output (stderr and errors), for comments
    # A provider limit the session ran into: {"kind": "quota"|"auth", "message", "reset_at"} (None: none
    # seen). Such a session is not the issue's failure: the run is parked, no attempt spent.
    limit: dict[str, Any] | None = None
    provider_retries: list[ProviderRetry] = Field(default_factory=list)  # in order; also sent live to
    # on_event as {"type": "provider_retry", "attempt", "message", "next" (Unix ms)}


EventCallback = Callable[[dict[str, Any]], None]


@runtime_checkable
class Agent(Protocol):
    """Runs coding sessions. Implementations: `opencode` and `command`."""

    name: str  # "opencode" or the command's name, for the `Agent:` trailer
    model: str  # "" when the agent has no model notion

    def run(
        self,
        request: SessionRequest,
        *,
        cancel: threading.Event | None = None,
        on_event: EventCallback | None = None,
    ) -> SessionResult:
        """Run one session to its end, a limit, or `cancel` being set; kill its whole process group
        in the last two cases. Never raises for a failed session: it reports it in the result.
        Raises `AgentUnavailable` when the executable cannot be started at all."""
