"""Recording how a step of the embedded engine ended: succeeded, failed (retry or not), parked,
deferred or interrupted; and the failure handler of a run."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel

from workflows.spec import StepDeferred, StepFailed, StepParked, StepSpec
from workflows.local.views import Views

if TYPE_CHECKING:
    from workflows.local.engine import _Context

log = structlog.get_logger("beads_runner.engine")


class Outcomes(Views):
    """The engine's writes after a step ran (see engine.py for claiming and running steps)."""

    PERSIST_BACKOFF_MAX = 10.0

    def _persist(self, record: Callable[..., None], *args: Any) -> None:
        """Record a step's outcome, however long the database refuses (a full disk, a lock held too
        long): given up, the step would stay "running" under a live owner whose lease keeps being
        renewed, and nothing would move once space is back. Stopping ends the wait: the step is then
        resumed by the next runner (its owner gone)."""
        delay = 0.2
        while True:
            try:
                record(*args)
                return
            except sqlite3.Error as exc:
                log.warning("cannot record a step's outcome; trying again", step=args[1].name, error=str(exc))
                if "readonly" in str(exc):  # opened while the file was read-only: it stays so; open anew
                    self.close()
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, self.PERSIST_BACKOFF_MAX)

    def _timeout_of(self, run_id: str, step: str) -> float:
        return self._conn().execute("SELECT timeout FROM steps WHERE run_id=? AND name=?",
                                    (run_id, step)).fetchone()["timeout"]

    def _step_succeeded(self, run_id: str, spec: StepSpec, attempt: int, output: BaseModel) -> None:
        now = time.time()
        last = spec.name == self.workflow.steps[-1].name
        with self._tx() as db:
            db.execute("UPDATE steps SET status='succeeded', output=?, finished_at=?, owner=NULL, lease_until=NULL "
                       "WHERE run_id=? AND name=? AND owner=?",
                       (output.model_dump_json(), now, run_id, spec.name, self.owner))
            db.execute("UPDATE attempts SET status='succeeded', finished_at=? WHERE run_id=? AND step=? AND attempt=?",
                       (now, run_id, spec.name, attempt))
            if last:
                db.execute("UPDATE runs SET status='succeeded', outcome=?, updated_at=?, finished_at=? WHERE id=?",
                           (output.model_dump_json(), now, now, run_id))
        self.record_event(run_id, spec.name, "step succeeded", attempt=attempt)
        if last:
            self.record_event(run_id, None, "run succeeded")

    def _step_failed(self, run_id: str, spec: StepSpec, attempt: int, exc: StepFailed, ctx: _Context) -> None:
        now = time.time()
        cancelled_by = self._conn().execute("SELECT cancel_requested FROM runs WHERE id=?",
                                            (run_id,)).fetchone()["cancel_requested"]
        if cancelled_by:
            # A person's word: no more attempts, whatever the step said.
            exc = StepFailed(f"cancelled by {cancelled_by}", retryable=False,
                             detail=exc.detail if not isinstance(exc, StepParked) else "")
        elif isinstance(exc, StepParked) and not ctx.timed_out:
            # Not the fault either (a provider's quota, its credentials): attempt not spent.
            with self._tx() as db:
                db.execute("UPDATE steps SET status='pending', attempt=MAX(attempt-1,0), owner=NULL, lease_until=NULL, "
                           "deadline=NULL, not_before=?, error=? WHERE run_id=? AND name=?",
                           (exc.until or now, exc.reason, run_id, spec.name))
                db.execute("UPDATE attempts SET status='parked', finished_at=?, error=? "
                           "WHERE run_id=? AND step=? AND attempt=?", (now, exc.reason, run_id, spec.name, attempt))
            self.record_event(run_id, spec.name, "step parked", attempt=attempt, reason=exc.reason, until=exc.until)
            return
        interrupted = ctx.cancel.is_set() and not ctx.timed_out and not cancelled_by
        if isinstance(exc, StepDeferred) and not interrupted and not ctx.timed_out and not cancelled_by:
            with self._tx() as db:
                db.execute("UPDATE steps SET status='pending', attempt=MAX(attempt-1,0), not_before=?, owner=NULL, "
                           "lease_until=NULL, deadline=NULL WHERE run_id=? AND name=?",
                           (now + exc.delay, run_id, spec.name))
                db.execute("UPDATE attempts SET status='deferred', finished_at=?, error=? "
                           "WHERE run_id=? AND step=? AND attempt=?", (now, exc.reason, run_id, spec.name, attempt))
            self.record_event(run_id, spec.name, "step deferred", attempt=attempt, reason=exc.reason,
                              retry_in=exc.delay)
            return
        if interrupted:
            # Shutdown, not the step's fault: back to pending, attempt not spent.
            with self._tx() as db:
                db.execute("UPDATE steps SET status='pending', attempt=MAX(attempt-1,0), owner=NULL, lease_until=NULL, "
                           "deadline=NULL WHERE run_id=? AND name=?", (run_id, spec.name))
                db.execute("UPDATE attempts SET status='interrupted', finished_at=?, error=? "
                           "WHERE run_id=? AND step=? AND attempt=?", (now, exc.reason, run_id, spec.name, attempt))
            self.record_event(run_id, spec.name, "step interrupted", attempt=attempt, reason=exc.reason)
            return
        policy = self._retry_for(spec)
        again = exc.retryable and attempt < policy.attempts
        with self._tx() as db:
            db.execute("UPDATE attempts SET status='failed', finished_at=?, error=? "
                       "WHERE run_id=? AND step=? AND attempt=?", (now, exc.reason, run_id, spec.name, attempt))
            if again:
                delay = policy.delay(attempt)
                db.execute("UPDATE steps SET status='pending', not_before=?, error=?, detail=?, owner=NULL, "
                           "lease_until=NULL, deadline=NULL WHERE run_id=? AND name=?",
                           (now + delay, exc.reason, exc.detail, run_id, spec.name))
            else:
                db.execute("UPDATE steps SET status='failed', error=?, detail=?, finished_at=?, owner=NULL, "
                           "lease_until=NULL WHERE run_id=? AND name=?",
                           (exc.reason, exc.detail, now, run_id, spec.name))
                db.execute("UPDATE runs SET status='failing', failed_step=?, error=?, updated_at=? WHERE id=?",
                           (spec.name, exc.reason, now, run_id))
        if again:
            self.record_event(run_id, spec.name, "step failed, will retry", attempt=attempt, reason=exc.reason,
                              retry_in=round(policy.delay(attempt), 2))
        else:
            self.record_event(run_id, spec.name, "step failed", attempt=attempt, reason=exc.reason,
                              retryable=exc.retryable)
            self._finish_failed(run_id)

    def _finish_failed(self, run_id: str) -> None:
        """Run the workflow's failure handler once, then mark the run failed.

        The handler is taken like a step, with a lease on the run row, so the worker thread that saw
        the failure and the recovery pass (or another runner) never run it at the same time."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT r.input, r.failed_step, s.error, s.detail, s.attempt FROM runs r "
                "JOIN steps s ON s.run_id=r.id AND s.name=r.failed_step WHERE r.id=? AND r.status='failing' "
                "AND (r.handler_until IS NULL OR r.handler_until < ?)", (run_id, now)).fetchone()
            if row is None:
                return
            db.execute("UPDATE runs SET handler_until=? WHERE id=?", (now + self.lease, run_id))
        if self.workflow.on_failure is not None:
            inp = self.workflow.input.model_validate_json(row["input"])
            error = StepFailed(row["error"] or "failed", retryable=False, detail=row["detail"] or "")
            try:
                self.workflow.on_failure(inp, run_id, row["failed_step"], error, row["attempt"])
            except Exception as exc:  # noqa: BLE001
                with self._tx() as db:
                    failures = db.execute("UPDATE runs SET handler_failures=handler_failures+1 WHERE id=? "
                                          "RETURNING handler_failures", (run_id,)).fetchone()[0]
                    if failures < self.handler_attempts:
                        # Leave the run 'failing': the handler is tried again a little later.
                        delay = self.handler_backoff * 2 ** (failures - 1)
                        db.execute("UPDATE runs SET handler_until=? WHERE id=?", (time.time() + delay, run_id))
                    else:
                        # Bounded: the handover is recorded here (status, explain and the next start read
                        # it), and the run ends, so `start --once` ends too.
                        db.execute("UPDATE runs SET handler_error=? WHERE id=?", (str(exc)[:2000], run_id))
                self.record_event(run_id, row["failed_step"], "failure handler failed", error=str(exc),
                                  tries=failures, gives_up=failures >= self.handler_attempts)
                if failures < self.handler_attempts:
                    return
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE runs SET status='failed', updated_at=?, finished_at=? WHERE id=? AND status='failing'",
                       (now, now, run_id))
        self.record_event(run_id, None, "run failed", failed_step=row["failed_step"], reason=row["error"])

    def _note(self, run_id: str, step: str, attempt: int, fields: dict[str, Any]) -> None:
        with self._tx() as db:
            row = db.execute("SELECT notes FROM attempts WHERE run_id=? AND step=? AND attempt=?",
                             (run_id, step, attempt)).fetchone()
            notes = json.loads(row["notes"]) if row and row["notes"] else {}
            notes.update(fields)
            db.execute("UPDATE attempts SET notes=? WHERE run_id=? AND step=? AND attempt=?",
                       (json.dumps(notes), run_id, step, attempt))
            db.execute("UPDATE steps SET notes=? WHERE run_id=? AND name=?", (json.dumps(notes), run_id, step))
