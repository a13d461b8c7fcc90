"""Reading a repository's runs from Hatchet: the views `status`, `logs` and `review` show."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from beads_runner.services import Services
from workflows.engine import (
    ACTIVE,
    CANCELLED,
    FAILED,
    FAILING,
    QUEUED,
    RUN_STATUSES,
    RUNNING,
    SUCCEEDED,
    EngineUnavailable,
    Event,
    RunView,
    StepView,
    TryView,
)
from workflows.spec import WorkflowSpec
from workflows.task_flow import TASK_FLOW

from workflows.hatchet.client import _is_run_id, repo_namespace
from workflows.hatchet.failures import decode_failure

log = structlog.get_logger("beads_runner.hatchet")

# Metadata on every run this runner submits: how `start` finds its own runs again.
META_WORKFLOW = "beads_workflow"
META_REPO = "beads_repo"
META_ISSUE = "beads_issue"

_STATUS = {"QUEUED": QUEUED, "RUNNING": RUNNING, "COMPLETED": SUCCEEDED, "FAILED": FAILED, "CANCELLED": CANCELLED}
_ACTIVE = tuple(s for s in ACTIVE if s != FAILING)  # Hatchet has no "failing": its handover is a task


class HatchetUnavailable(EngineUnavailable):
    """Hatchet's API failed a call the poll loop needs; the loop tries again at the next poll."""


class HatchetRuns:
    """A repository's runs, read through Hatchet's API: what `status`, `logs`, `review` and the
    first step's guard read. `HatchetEngine` (runner.py) adds submitting and the runner's loop."""

    def __init__(self, hatchet: Any, workflow: Any, services: Services, *, flow: WorkflowSpec = TASK_FLOW):
        self.hatchet = hatchet
        self.workflow = workflow
        self.flow = flow
        self.services = services
        self.repo = repo_namespace(services)  # the same on every machine working this repository

    def _meta(self, key: str | None = None) -> dict[str, str]:
        meta = {META_WORKFLOW: self.flow.name, META_REPO: self.repo}
        if key is not None:
            meta[META_ISSUE] = key
        return meta

    def _list(self, statuses: tuple[str, ...] | None, limit: int, key: str | None,
              before: float | None = None) -> list[Any]:
        """This repository's runs (of one issue, with `key`), newest first.

        The SDK's `runs.list` sends no metadata operator, and the engine then ORs the pairs: every run
        of the repository would match any issue. The REST API takes the operator: ask for AND, and
        check the pairs here as well, so a server that ignores it cannot mislead us."""
        from hatchet_sdk import V1TaskStatus

        wanted = [V1TaskStatus(s) for s, ours in _STATUS.items() if statuses is None or ours in statuses]
        meta = self._meta(key)
        try:
            rows = self._list_rows(wanted, limit, meta, before)
        except Exception as exc:  # noqa: BLE001
            raise HatchetUnavailable(f"could not list Hatchet runs: {exc}",
                                     fix="check that the Hatchet engine is up (docs/hatchet.md)") from exc
        return [r for r in rows if all(str((r.additional_metadata or {}).get(k)) == v for k, v in meta.items())]

    def _list_rows(self, wanted: list[Any], limit: int, meta: dict[str, str], before: float | None = None) -> list[Any]:
        """One call to the engine's REST API: runs with all of `meta` (AND), of the statuses wanted."""
        from hatchet_sdk.clients.rest.api.workflow_runs_api import WorkflowRunsApi
        from hatchet_sdk.clients.rest.models.v1_additional_metadata_operator import V1AdditionalMetadataOperator

        with self.hatchet.runs.client() as client:
            result = WorkflowRunsApi(client).v1_workflow_run_list(
                tenant=self.hatchet.config.tenant_id, since=datetime.now(tz=UTC) - timedelta(days=6),
                only_tasks=False, statuses=wanted, limit=limit,
                until=datetime.fromtimestamp(before, tz=UTC) if before is not None else None,
                additional_metadata=[f"{k}:{v}" for k, v in meta.items()],
                additional_metadata_operator=V1AdditionalMetadataOperator.AND, include_payloads=True)
        return list(result.rows or [])

    def _summary_view(self, row: Any) -> RunView:
        meta = row.additional_metadata or {}
        status = _STATUS.get(getattr(row.status, "value", str(row.status)), "running")
        # When the run was triggered: its metadata's creation time (row.created_at is when its first
        # task started, later, and not in trigger order).
        stamp = getattr(getattr(row, "metadata", None), "created_at", None) or row.created_at
        created = stamp.timestamp() if stamp else time.time()
        finished = row.finished_at.timestamp() if row.finished_at else None
        return RunView(id=row.workflow_run_external_id or row.metadata.id, key=str(meta.get(META_ISSUE, "")),
                       status=status, input=dict(row.input or {}), created_at=created,
                       updated_at=finished or created, finished_at=finished, failed_step=None,
                       error=row.error_message, outcome=dict(row.output or {}) or None)

    def get_run(self, run_id: str) -> RunView | None:
        if not _is_run_id(run_id):
            return None  # an issue id or a short form: Hatchet's run ids are UUIDs
        try:
            details = self.hatchet.runs.get(run_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not read a Hatchet run", run_id=run_id, error=str(exc))
            return None
        run = details.run
        meta = run.additional_metadata or {}
        by_name = {}
        for t in details.tasks or []:
            name = (t.action_id or "").rsplit(":", 1)[-1] or t.display_name
            by_name[name] = t
        steps = []
        failed_step, error = None, run.error_message
        for spec in self.flow.steps:
            t = by_name.get(spec.name)
            status = "pending"  # not created yet: its parents are still running
            if t is not None:
                status = _STATUS.get(getattr(t.status, "value", str(t.status)), "running")
                status = {"queued": "pending", "cancelled": "failed"}.get(status, status)
            if status == "failed" and failed_step is None:
                failed_step, error = spec.name, (t.error_message if t is not None else error)
            steps.append(StepView(name=spec.name, status=status, attempt=(t.attempt or (t.retry_count or 0) + 1)
                                  if t is not None else 0,
                                  max_attempts=self.services.config.engine.retry.attempts,
                                  error=t.error_message if t is not None else None, notes={},
                                  started_at=t.started_at.timestamp() if t is not None and t.started_at else None,
                                  finished_at=t.finished_at.timestamp() if t is not None and t.finished_at else None,
                                  not_before=0.0, output=dict(t.output or {}) or None if t is not None else None))
        status = _STATUS.get(getattr(run.status, "value", str(run.status)), "running")
        last = steps[-1].output if steps else None
        return RunView(id=run_id, key=str(meta.get(META_ISSUE, "")), status=status, input=dict(run.input or {}),
                       created_at=run.created_at.timestamp() if run.created_at else time.time(),
                       updated_at=time.time(), finished_at=run.finished_at.timestamp() if run.finished_at else None,
                       failed_step=failed_step if status == "failed" else None,
                       error=decode_failure(error)[0].reason if status == "failed" and error else None,
                       outcome=last if status == "succeeded" else None, steps=steps)

    def runs(self, statuses: tuple[str, ...] | None = None, limit: int = 100, key: str | None = None,
             before: float | None = None) -> list[RunView]:
        views = [self._summary_view(r) for r in self._list(statuses, limit, key, before)]
        if before is not None:  # the engine's `until` is a bound on its own time: check ours too
            views = [v for v in views if v.created_at < before]
        # Active runs are few (≤ sessions + runs in flight); their steps say which hold a session.
        return [(self.get_run(v.id) or v) if v.status in _ACTIVE else v for v in views]

    def attempts(self, run_id: str) -> list[TryView]:
        """One entry per step that ran, its latest attempt (Hatchet keeps the count, not each try)."""
        run = self.get_run(run_id)
        if run is None:
            return []
        return [TryView(run_id=run_id, step=s.name, attempt=s.attempt, status=s.status, error=s.error,
                        started_at=s.started_at, finished_at=s.finished_at, notes=s.notes)
                for s in run.steps if s.attempt]

    def counts(self) -> dict[str, int]:
        """Runs of this repository per status, as far back as the runs list reaches (six days)."""
        found = dict.fromkeys(RUN_STATUSES, 0)
        for row in self._list(None, 1000, None):
            found[self._summary_view(row).status] += 1
        return found

    def dashboard_url(self, run_id: str) -> str | None:
        """The run in the Hatchet dashboard (the API's server, which serves the dashboard too)."""
        server = str(getattr(self.hatchet.config, "server_url", "") or "").rstrip("/")
        return f"{server}/runs/{run_id}" if server and _is_run_id(run_id) else None

    def events(self, run_id: str, after_id: int = 0) -> list[Event]:
        """The run's step events, read back from the engine: each step's `ctx.log` lines (one JSON
        object each, see HatchetStepContext.log), in time order, numbered so `logs -f` can resume."""
        if not _is_run_id(run_id):
            return []
        try:
            details = self.hatchet.runs.get(run_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not read a Hatchet run", run_id=run_id, error=str(exc).splitlines()[0])
            return []
        out: list[dict[str, Any]] = []
        for t in details.tasks or []:
            step = (t.action_id or "").rsplit(":", 1)[-1] or t.display_name
            task_id = getattr(t, "task_external_id", None) or t.metadata.id
            try:
                lines = self.hatchet.logs.list(task_id).rows or []
            except Exception as exc:  # noqa: BLE001
                log.debug("could not read a step's logs", run_id=run_id, step=step, error=str(exc).splitlines()[0])
                continue
            for line in lines:
                try:
                    data = json.loads(line.message)
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    data = {"event": str(line.message)}
                ts = line.created_at.timestamp() if line.created_at else 0.0
                out.append({"run_id": run_id, "step": step, "ts": ts, **data})
        out.sort(key=lambda e: (e["ts"], e["step"]))
        for n, event in enumerate(out, 1):
            event["id"] = n
        return [e for e in out if e["id"] > after_id]

    def sessions_in_use(self, key: str) -> int:
        return sum(1 for run in self.runs(statuses=_ACTIVE, limit=1000)
                   for s in run.steps if s.status == "running" and self.flow.step(s.name).concurrency_key == key)

    def stream(self, run_id: str) -> Iterator[Event]:
        """The run's step events as they happen (`ctx.put_stream` on the workers), until the run ends."""
        import asyncio
        import queue

        events: queue.Queue = queue.Queue()
        done = object()

        async def pump() -> None:
            try:
                async for payload in self.hatchet.runs.subscribe_to_stream(run_id):
                    events.put(payload)
            finally:
                events.put(done)

        threading.Thread(target=lambda: asyncio.run(pump()), name="hatchet-stream", daemon=True).start()
        while (item := events.get()) is not done:
            try:
                yield json.loads(item) if isinstance(item, str) else dict(item)
            except (ValueError, TypeError):
                yield {"event": str(item)}

    def active_run(self, key: str) -> str | None:
        rows = self._list(_ACTIVE, 1, key)
        return self._summary_view(rows[0]).id if rows else None

    def wait(self, run_id: str, timeout: float | None = None) -> RunView | None:
        """Until the run is finished on the workers (or `timeout` passes), looking every two seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            view = self.get_run(run_id)
            if view is not None and view.status not in ACTIVE:
                return view
            if deadline is not None and time.monotonic() > deadline:
                return view
            time.sleep(2)

    def settled_run(self, run_id: str, tries: int = 5, delay: float = 1.0) -> RunView | None:
        """The run once the engine can show it (a run just started may not be readable for a moment)."""
        for n in range(tries):
            view = self.get_run(run_id)
            if view is not None:
                return view
            if n + 1 < tries:
                time.sleep(delay)
        return None
