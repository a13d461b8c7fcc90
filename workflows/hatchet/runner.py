"""`beads-runner start` on Hatchet: submitting runs, watching them, and the upkeep Hatchet needs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from pydantic import BaseModel

from beads_runner.errors import RunnerError
from beads_runner.services import Services
from workflows.engine import (
    CANCELLED,
    Event,
)

from workflows.hatchet.client import _wait_for_engine, make_client
from workflows.hatchet.engine import _ACTIVE, HatchetRuns, HatchetUnavailable
from workflows.hatchet.worker import _put_rate_limit, register_definition
from workflows.hatchet.workflow import build_workflow
from workflows.spec import WorkflowSpec
from workflows.task_flow import TASK_FLOW

log = structlog.get_logger("beads_runner.hatchet")

# How often `start` looks for cancelled runs whose issue is still claimed.
SWEEP_EVERY = 30.0
# How often `start` looks at its runs in flight, to wake its poll loop when one starts or ends.
WATCH_EVERY = 0.5


class HatchetEngine(HatchetRuns):
    """`workflows.engine.Engine` on Hatchet: what `daemon.Runner` asks of an engine.

    Runs execute on workers (`beads-runner worker`), not here: `start`/`stop` only mark the loop."""

    def __init__(self, hatchet: Any, workflow: Any, services: Services, *, flow: WorkflowSpec = TASK_FLOW):
        super().__init__(hatchet, workflow, services, flow=flow)
        self._listeners: list[Callable[[], None]] = []
        self.started = False
        # Runs this process started and has not yet seen end: the runs list is read from the engine's
        # analytics tables, which may lag a new run by a moment, and `--once` must not stop before it.
        self._pending: set[str] = set()
        self._watcher: threading.Thread | None = None
        self.settings_from_up = False  # the client settings came from `beads-runner hatchet up`
        self._next_sweep = 0.0

    def submit(self, inp: BaseModel) -> tuple[str, bool]:
        from hatchet_sdk.exceptions import IdempotencyCollisionError

        key = self.flow.key(inp)
        try:
            ref = self.workflow.run(inp, wait_for_result=False, additional_metadata=self._meta(key))
        except IdempotencyCollisionError as exc:
            return exc.existing_run_external_id, False
        except Exception as exc:  # noqa: BLE001
            raise HatchetUnavailable(f"could not start a run for {key}: {exc}",
                                     fix="check that the Hatchet engine is up (docs/hatchet.md)") from exc
        self._pending.add(ref.workflow_run_id)
        return ref.workflow_run_id, True

    @property
    def steps_run_here(self) -> bool:
        return False  # on `beads-runner worker` processes, which enter their sandbox themselves

    def has_active_runs(self) -> bool:
        if self._list(_ACTIVE, 1, None):
            return True
        for run_id in list(self._pending):
            view = self.get_run(run_id)
            if view is not None and view.status not in _ACTIVE:
                self._pending.discard(run_id)
        return bool(self._pending)

    def start(self) -> None:
        self.started = True
        if self._listeners and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_runs, name="hatchet-watch", daemon=True)
            self._watcher.start()

    def _watch_runs(self) -> None:
        """Wake the poll loop when a run of this repository starts or ends on the workers, as the
        embedded engine does when a step ends: a finished run frees its claim at once, and `--once`
        ends without waiting for the next poll. One list call every WATCH_EVERY seconds."""
        last: frozenset[tuple[str, str]] | None = None
        while self.started:
            try:
                current = frozenset((self._summary_view(r).id, str(getattr(r.status, "value", r.status)))
                                    for r in self._list(_ACTIVE, 200, None))
            except HatchetUnavailable:
                current = last
            if last is not None and current != last:
                for fn in list(self._listeners):
                    fn()
            last = current
            time.sleep(WATCH_EVERY)

    def stop(self, grace: float = 0.0) -> None:
        self.started = False
        log.info("runs in flight go on on the Hatchet workers", grace_ignored=grace)

    def cancel_running(self) -> None:
        log.info("runs are not cancelled by stopping `start`; use the Hatchet dashboard or `hatchet.runs.cancel`")

    def add_listener(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    def last_event_id(self) -> int:
        return 0

    def events_since(self, after_id: int, limit: int = 500) -> list[Event]:
        """Notifications read the embedded engine's event log; on Hatchet the workers' own runners
        send none yet (docs/hatchet.md, limits)."""
        return []

    def clear_handler_error(self, run_id: str) -> None:
        """The handover of a Hatchet run is the on-failure task's, recorded by the engine itself."""

    def request_cancel(self, run_id: str, by: str) -> bool:
        """`beads-runner cancel` on Hatchet: cancel the run through the API. The worker's step gets
        the cancellation and kills the session's process group; `start` then hands the issue over."""
        try:
            self.hatchet.runs.cancel(run_id)
        except Exception as exc:  # noqa: BLE001
            raise HatchetUnavailable(f"could not cancel run {run_id}: {exc}",
                                     fix="check that the Hatchet engine is up (docs/hatchet.md)") from exc
        log.info("run cancelled through the Hatchet API", run_id=run_id, by=by)
        return True

    def describe(self) -> str:
        """The token parses, says where the engine is, and the engine answers with it."""
        from workflows.hatchet.client import check_hatchet_config

        detail = check_hatchet_config(contact=True)
        return detail + (" (settings from `beads-runner hatchet up`)" if self.settings_from_up else "")

    def prepare(self) -> None:
        """The engine answers, the sessions' rate limit is set and this configuration's definition is
        registered (gRPC works, and runs use one definition), before the first claim."""
        _wait_for_engine(self.hatchet)
        _put_rate_limit(self.hatchet, self.services.config)
        register_definition(self.hatchet, self.services, self.workflow)

    def housekeeping(self, force: bool = False) -> list[str]:
        """Hatchet runs no on-failure task for a CANCELLED run (cancelled through the API or the
        dashboard, or by a schedule timeout): its issue would stay claimed for ever. Hand each such
        issue to a person, with a comment; its branch is kept. Returns the issues handed over.
        Looks every SWEEP_EVERY seconds, or now with `force`."""
        now = time.monotonic()
        if not force and now < self._next_sweep:
            return []
        self._next_sweep = now + SWEEP_EVERY
        swept_file = self.services.state_dir / "hatchet" / "swept-runs.json"
        try:
            swept = set(json.loads(swept_file.read_text()))
        except (OSError, ValueError):
            swept = set()
        handed: list[str] = []
        tracker = self.services.tracker
        for row in self._list((CANCELLED,), 100, None):
            view = self._summary_view(row)
            if view.id in swept or not view.key:
                continue
            try:
                issue = tracker.show(view.key)
                if issue.status == "in_progress" and issue.assignee == tracker.actor \
                        and not self.active_run(view.key):
                    tracker.comment(view.key, f"beads-runner: its Hatchet run {view.id} was cancelled (through the "
                                              "API or dashboard, or by a schedule timeout), so nothing landed; the "
                                              f"branch beads-runner/{view.key} is kept. Reopen the issue to run "
                                              "it again.")
                    tracker.hand_to_human(view.key)
                    handed.append(view.key)
                    log.warning("run was cancelled; handed the issue to a person", issue_id=view.key, run_id=view.id)
            except RunnerError as exc:
                log.warning("could not sweep a cancelled run; will try again", run_id=view.id, error=exc.message)
                continue
            swept.add(view.id)
        swept_file.parent.mkdir(parents=True, exist_ok=True)
        swept_file.write_text(json.dumps(sorted(swept)))
        return handed


def hatchet_engine(services: Services) -> HatchetEngine:
    """The Hatchet engine of a repository's configuration (for `start`, `submit`, `status`, `logs`)."""
    from beads_runner.hatchet_local import load_client_env

    from_up = load_client_env(services.state_dir)  # `hatchet up`'s settings, unless the user set a token
    client = make_client(services)
    engine = HatchetEngine(client, build_workflow(client, services.config), services)
    engine.settings_from_up = from_up
    return engine
