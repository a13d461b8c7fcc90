"""Reading the embedded engine's runs: the views `status`, `logs`, `review` and the daemon read."""

from __future__ import annotations

import json
import sqlite3
import time

from pydantic import BaseModel

from workflows.engine import ACTIVE, RUN_STATUSES, Event, RunView, StepView, TryView
from workflows.spec import WorkflowSpec
from workflows.local.store import Store


class Views(Store):
    """The engine's answers about runs, steps, tries and events (no writes but `clear_handler_error`)."""

    workflow: WorkflowSpec
    max_sessions: int

    def active_run(self, key: str) -> str | None:
        row = self._conn().execute(
            "SELECT id FROM runs WHERE workflow=? AND key=? AND status IN ('queued','running','failing')",
            (self.workflow.name, key)).fetchone()
        return row["id"] if row else None

    # --- reading state -----------------------------------------------------------------------
    def _step_output(self, run_id: str, step: str) -> BaseModel:
        row = self._conn().execute("SELECT output, status FROM steps WHERE run_id=? AND name=?",
                                   (run_id, step)).fetchone()
        if row is None or row["status"] != "succeeded":
            raise RuntimeError(f"step {step} of run {run_id} has no output")
        return self.workflow.step(step).output.model_validate_json(row["output"])

    def events(self, run_id: str, after_id: int = 0) -> list[Event]:
        rows = self._conn().execute("SELECT * FROM events WHERE run_id=? AND id>? ORDER BY id",
                                    (run_id, after_id)).fetchall()
        return [{"id": r["id"], "run_id": r["run_id"], "step": r["step"], "ts": r["ts"], "event": r["event"],
                 **json.loads(r["data"] or "{}")} for r in rows]

    def clear_handler_error(self, run_id: str) -> None:
        """The handover a failing handler could only record here has reached the tracker since."""
        with self._tx() as db:
            db.execute("UPDATE runs SET handler_error=NULL WHERE id=?", (run_id,))
        self.record_event(run_id, None, "handover delivered")

    def last_event_id(self) -> int:
        return self._conn().execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]

    def events_since(self, after_id: int, limit: int = 500) -> list[Event]:
        """Events of every run recorded after `after_id`, oldest first (for notifications)."""
        rows = self._conn().execute("SELECT * FROM events WHERE id>? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [{"id": r["id"], "run_id": r["run_id"], "step": r["step"], "ts": r["ts"], "event": r["event"],
                 **json.loads(r["data"] or "{}")} for r in rows]

    def get_run(self, run_id: str) -> RunView | None:
        row = self._conn().execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._view(row) if row else None

    def runs(self, statuses: tuple[str, ...] | None = None, limit: int = 100, key: str | None = None,
             before: float | None = None) -> list[RunView]:
        sql, args = "SELECT * FROM runs WHERE workflow=?", [self.workflow.name]
        if before is not None:
            sql += " AND created_at < ?"
            args.append(float(before))
        if statuses:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args += list(statuses)
        if key is not None:
            sql += " AND key=?"
            args.append(key)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        return [self._view(r) for r in self._conn().execute(sql, args).fetchall()]

    def attempts(self, run_id: str) -> list[TryView]:
        return self.tries(run_id=run_id)

    def counts(self) -> dict[str, int]:
        found = dict(self._conn().execute("SELECT status, COUNT(*) FROM runs WHERE workflow=? GROUP BY status",
                                          (self.workflow.name,)).fetchall())
        return {status: found.get(status, 0) for status in RUN_STATUSES}

    def stream(self, run_id: str) -> None:
        """No push here: `events` is read again (the database is local)."""
        return None

    def settled_run(self, run_id: str) -> RunView | None:
        return self.get_run(run_id)

    def describe(self) -> str:
        return (f"local (SQLite at {self.db_path}, schema version {self.schema_version()}), "
                f"max_sessions={self.max_sessions}")

    def dashboard_url(self, run_id: str) -> None:
        """The embedded engine has no UI of its own (`beads-runner status`, `logs` and the console show it)."""
        return None

    def sessions_in_use(self, key: str) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM steps WHERE status='running' AND concurrency_key=?",
                                    (key,)).fetchone()[0]

    def _view(self, row: sqlite3.Row) -> RunView:
        steps = self._conn().execute("SELECT * FROM steps WHERE run_id=? ORDER BY position", (row["id"],)).fetchall()
        return RunView(
            id=row["id"], key=row["key"], status=row["status"], input=json.loads(row["input"]),
            created_at=row["created_at"], updated_at=row["updated_at"], finished_at=row["finished_at"],
            failed_step=row["failed_step"], error=row["error"],
            outcome=json.loads(row["outcome"]) if row["outcome"] else None,
            cancel_requested=row["cancel_requested"], handler_error=row["handler_error"],
            steps=[StepView(name=s["name"], status=s["status"], attempt=s["attempt"], max_attempts=s["max_attempts"],
                            error=s["error"], notes=json.loads(s["notes"]) if s["notes"] else {},
                            started_at=s["started_at"], finished_at=s["finished_at"], not_before=s["not_before"],
                            output=json.loads(s["output"]) if s["output"] else None) for s in steps],
        )

    def wait(self, run_id: str, timeout: float | None = None) -> RunView | None:
        """Block until the run is finished (succeeded, failed, cancelled) or `timeout` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            view = self.get_run(run_id)
            if view is None or view.status not in ACTIVE:
                return view
            if deadline is not None and time.monotonic() > deadline:
                return view
            time.sleep(0.1)

    def has_active_runs(self) -> bool:
        return self._conn().execute(
            "SELECT 1 FROM runs WHERE workflow=? AND status IN ('queued','running','failing') LIMIT 1",
            (self.workflow.name,)).fetchone() is not None
