"""The workflow as data: steps, parents, retry policy, timeouts, concurrency keys.

Written once (see `task_flow.TASK_FLOW`) and run by either engine: the embedded one
(`workflows.local`) or Hatchet (`workflows.hatchet`). Engines read these fields; step functions
never know which engine runs them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel


class StepFailed(Exception):
    """A step could not do its work. `retryable=False` skips the remaining attempts."""

    def __init__(self, reason: str, *, retryable: bool = True, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.detail = detail  # the tail of the agent's or gate's output, for the issue comment


class StepDeferred(StepFailed):
    """Not now, and not the step's fault: what it needs is held by someone alive (another runner's
    agent in the worktree). The embedded engine tries it again after `delay` seconds without spending
    an attempt; engines that cannot defer treat it as a retryable failure."""

    def __init__(self, reason: str, *, delay: float = 15.0, detail: str = ""):
        super().__init__(reason, retryable=True, detail=detail)
        self.delay = delay


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # tries in all
    backoff: float = 1.0  # seconds before the second try
    factor: float = 2.0
    max_backoff: float = 30.0

    def delay(self, failed_attempts: int) -> float:
        """Wait before the next try, after `failed_attempts` (≥ 1) failures: 1, 2, 4, … ≤ 30 s."""
        return min(self.max_backoff, self.backoff * self.factor ** max(0, failed_attempts - 1))


class StepContext(Protocol):
    """What a step may ask of the engine that runs it."""

    run_id: str
    attempt: int  # 1 for the first try
    cancel: threading.Event  # set when the step must stop (timeout, shutdown, cancellation)

    def parent(self, step: str) -> Any:
        """The output (a pydantic model) of a parent step."""

    def log(self, event: str, **fields: Any) -> None:
        """A structured event for this step (run id, issue id and step name are added)."""

    def note(self, **fields: Any) -> None:
        """Record progress the engine keeps with the step (e.g. the agent session id)."""


@dataclass(frozen=True)
class StepSpec:
    name: str
    fn: Callable[[BaseModel, StepContext], BaseModel]
    output: type[BaseModel]
    parents: tuple[str, ...] = ()
    retry: RetryPolicy = RetryPolicy()
    timeout: Callable[[Any], float] | None = None  # from the config: seconds (None: engine default)
    concurrency_key: str | None = None  # steps sharing a key share the `max_sessions` cap


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    input: type[BaseModel]
    steps: tuple[StepSpec, ...]
    # on_failure(input, run_id, step name, error, attempts): after the last attempt of any step
    on_failure: Callable[[Any, str, str, StepFailed, int], None] | None = None
    key: Callable[[BaseModel], str] = field(default=lambda inp: str(inp))  # one active run per key

    def step(self, name: str) -> StepSpec:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def children(self, name: str) -> list[StepSpec]:
        return [s for s in self.steps if name in s.parents]
