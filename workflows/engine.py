"""What the rest of beads-runner asks of an engine, and the one vocabulary both engines answer in.

Two engines run `TASK_FLOW`: the embedded one (`workflows.local`, SQLite, steps run in this
process) and Hatchet (`workflows.hatchet`, steps run on `beads-runner worker` processes). The
daemon, `status`, `logs`, `review`, `explain`, `cancel`, `retry` and the web console talk to
either through `Engine` only; whatever differs between the two lives inside the engine classes.

`open_engine` is the one place that picks the engine of a repository's configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypedDict, runtime_checkable

from pydantic import BaseModel

from beads_runner.errors import RunnerError

if TYPE_CHECKING:
    from beads_runner.services import Services

# --- statuses --------------------------------------------------------------------------------------
RunStatus = Literal["queued", "running", "failing", "succeeded", "failed", "cancelled"]
QUEUED: Final = "queued"
RUNNING: Final = "running"
FAILING: Final = "failing"      # a step failed for good; the failure handler (handover) is running
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
RUN_STATUSES: Final[tuple[RunStatus, ...]] = (QUEUED, RUNNING, FAILING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE: Final[tuple[RunStatus, ...]] = (QUEUED, RUNNING, FAILING)  # not finished: the issue is the run's
FINISHED: Final[tuple[RunStatus, ...]] = (SUCCEEDED, FAILED, CANCELLED)

StepStatus = Literal["pending", "running", "succeeded", "failed"]
PENDING: Final = "pending"
STEP_STATUSES: Final[tuple[StepStatus, ...]] = (PENDING, RUNNING, SUCCEEDED, FAILED)

# One try of a step. interrupted: its runner stopped or died (not spent); parked: a provider's
# limit (not spent); deferred: its worktree was busy (not spent).
TryStatus = Literal["running", "succeeded", "failed", "interrupted", "parked", "deferred"]
TRY_STATUSES: Final[tuple[TryStatus, ...]] = (RUNNING, SUCCEEDED, FAILED, "interrupted", "parked", "deferred")


# --- views ------------------------------------------------------------------------------------------
@dataclass
class StepView:
    name: str
    status: StepStatus
    attempt: int
    max_attempts: int
    error: str | None
    notes: dict[str, Any]
    started_at: float | None
    finished_at: float | None
    not_before: float
    output: dict[str, Any] | None


@dataclass
class RunView:
    id: str
    key: str
    status: RunStatus
    input: dict[str, Any]
    created_at: float
    updated_at: float
    finished_at: float | None
    failed_step: str | None
    error: str | None
    outcome: dict[str, Any] | None
    steps: list[StepView] = field(default_factory=list)
    cancel_requested: str | None = None
    handler_error: str | None = None  # the tracker refused the handover: recorded here instead

    @property
    def current_step(self) -> StepView | None:
        for s in self.steps:
            if s.status in (RUNNING, PENDING, FAILED):
                return s
        return None


class TryView(TypedDict):
    """One try of a step (`Engine.attempts`). A dict, so JSON and old callers read it as before."""

    run_id: str
    step: str
    attempt: int
    status: TryStatus
    error: str | None
    started_at: float | None
    finished_at: float | None
    notes: dict[str, Any]


# An engine event: {"id", "run_id", "step", "ts", "event", ...the event's own fields}.
Event = dict[str, Any]


class EngineUnavailable(RunnerError):
    """The engine did not answer a call the runner needs; the runner tries again at its next poll."""


# --- the interface ------------------------------------------------------------------------------------
@runtime_checkable
class Engine(Protocol):
    """What the daemon, the commands and the console ask of an engine."""

    # submitting and cancelling
    def submit(self, inp: BaseModel) -> tuple[str, bool]:
        """Start a run for `inp` unless one is active for its key. Returns (run id, created)."""
        ...

    def active_run(self, key: str) -> str | None:
        """The id of the issue's run that is not finished, if any."""
        ...

    def request_cancel(self, run_id: str, by: str) -> bool:
        """Ask an active run to stop now (its handover names `by`). False if it is not active."""
        ...

    # reading
    def runs(self, statuses: tuple[str, ...] | None = None, limit: int = 100,
             key: str | None = None, before: float | None = None) -> list[RunView]:
        """Runs (of these statuses, of one issue with `key`, created before the time `before`: the
        next page after a page's oldest run), newest first."""
        ...

    def get_run(self, run_id: str) -> RunView | None:
        """A run with its steps; None if there is no such run."""
        ...

    def attempts(self, run_id: str) -> list[TryView]:
        """The tries of a run's steps, oldest first."""
        ...

    def counts(self) -> dict[str, int]:
        """How many runs there are of each run status (every status in RUN_STATUSES is a key)."""
        ...

    def sessions_in_use(self, key: str) -> int:
        """Steps with this concurrency key running now (agent sessions for SESSION_KEY)."""
        ...

    def has_active_runs(self) -> bool:
        ...

    def events(self, run_id: str, after_id: int = 0) -> list[Event]:
        """A run's events after `after_id`, oldest first."""
        ...

    def events_since(self, after_id: int, limit: int = 500) -> list[Event]:
        """Every run's events after `after_id`, oldest first (for notifications)."""
        ...

    def last_event_id(self) -> int:
        ...

    def stream(self, run_id: str) -> Iterator[Event] | None:
        """A run's events as the engine pushes them, until it ends; None: poll `events` instead."""
        ...

    def settled_run(self, run_id: str) -> RunView | None:
        """The run, waiting a moment for an engine that shows a new run late; None: its end is unknown."""
        ...

    def wait(self, run_id: str, timeout: float | None = None) -> RunView | None:
        """Block until the run is finished or `timeout` passes; the run as it is then."""
        ...

    def dashboard_url(self, run_id: str) -> str | None:
        """Where a person sees the run in the engine's own UI; None if the engine has none."""
        ...

    @property
    def steps_run_here(self) -> bool:
        """Whether this process runs the steps (so this machine's sandbox, parks and budget apply)."""
        ...

    def describe(self) -> str:
        """For `doctor`: where the engine is and that it answers (RunnerError with the fix if not)."""
        ...

    # the runner's loop
    def prepare(self) -> None:
        """Before `start` claims anything: make sure runs can run (raise RunnerError with the fix)."""
        ...

    def start(self) -> None:
        ...

    def stop(self, grace: float = 0.0) -> None:
        ...

    def cancel_running(self) -> None:
        ...

    def add_listener(self, fn: Callable[[], None]) -> None:
        """`fn` is called (from an engine thread) when a step or a run ends."""
        ...

    def housekeeping(self, force: bool = False) -> list[str]:
        """Upkeep the runner asks for at each poll and before `--once` ends. Returns the issues it
        handed to a person (Hatchet: those whose run was cancelled behind the runner's back)."""
        ...

    def clear_handler_error(self, run_id: str) -> None:
        """A handover recorded only in the engine has reached the tracker since."""
        ...


def open_engine(services: Services, *, budget: Any = None, admission: Any = None) -> Engine:
    """The engine of a repository's configuration (`engine.kind`): the one place that picks it.
    `budget` and `admission` (the daemon's) decide when a session may start, where steps run in
    this process."""
    if services.config.engine.kind == "hatchet":
        from workflows.hatchet import hatchet_engine

        return hatchet_engine(services)
    from beads_runner.engine_setup import build_engine

    return build_engine(services, budget=budget, admission=admission)


def existing_engine(services: Services) -> Engine | None:
    """The engine to read runs from; None when the embedded engine has no state yet (reading
    commands do not create one)."""
    from beads_runner.config import STATE_DB

    if services.config.engine.kind != "hatchet" and not (services.state_dir / STATE_DB).exists():
        return None
    return open_engine(services)
