"""The embedded engine: durable DAG runs in SQLite, no server needed.

Run and step state live in one SQLite file (WAL). A step is *claimed* by a process in a write
transaction (`BEGIN IMMEDIATE`) that also checks the concurrency cap, so the cap holds across
threads and across runner processes sharing the file. A claim carries a lease that its owner
renews; a step whose owner died (its pid gone, or its lease expired) goes back to pending and is
picked up again: a restarted runner resumes instead of starting over. Retries, backoff and
timeouts are data on each step row.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel

from workflows.spec import RetryPolicy, StepFailed, StepSpec, WorkflowSpec
from workflows.local.outcomes import Outcomes

log = structlog.get_logger("beads_runner.engine")

_READY_STEPS = """
    SELECT s.run_id, s.name, s.attempt, s.concurrency_key, s.timeout, r.input FROM steps s
    JOIN runs r ON r.id = s.run_id
    WHERE s.status = 'pending' AND s.not_before <= ? AND r.status IN ('queued', 'running') AND r.workflow = ?
      AND r.cancel_requested IS NULL
      AND NOT EXISTS (SELECT 1 FROM steps p
                      WHERE p.run_id = s.run_id AND p.position < s.position AND p.status != 'succeeded')
    ORDER BY r.created_at, s.position LIMIT ?"""


class _Context:
    """The StepContext the embedded engine hands to a step."""

    def __init__(self, engine: LocalEngine, run_id: str, step: str, attempt: int, inp: BaseModel, key: str):
        self.run_id = run_id
        self.attempt = attempt
        self.cancel = threading.Event()
        self.timed_out = False  # set with `cancel` when the step outlived its timeout
        self._engine = engine
        self._step = step
        self._key = key
        self._input = inp

    def parent(self, step: str) -> Any:
        return self._engine._step_output(self.run_id, step)

    def log(self, event: str, **fields: Any) -> None:
        self._engine.record_event(self.run_id, self._step, event, **fields)

    def note(self, **fields: Any) -> None:
        self._engine._note(self.run_id, self._step, self.attempt, fields)


def _owner_alive(owner: str | None) -> bool:
    """Whether the process named by an owner token (`host:pid:nonce`) still runs on this host."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname():
        return True  # another machine: trust its lease
    try:
        os.kill(int(pid_text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class LocalEngine(Outcomes):
    """Runs a WorkflowSpec's DAG durably. Thread-safe; several processes may share one database."""

    def __init__(
        self,
        db_path: Path,
        workflow: WorkflowSpec,
        *,
        max_sessions: int = 3,
        workers: int = 8,
        retry: RetryPolicy | None = None,
        step_timeouts: dict[str, float] | None = None,
        default_timeout: float = 3600.0,
        lease: float = 30.0,
        poll: float = 0.05,
        before_resume: Callable[[], object] | None = None,
        admit: Callable[[str], bool] | None = None,
        handler_attempts: int = 3,
        handler_backoff: float = 5.0,
    ):
        self.workflow = workflow
        self.max_sessions = max_sessions
        self.workers = max(workers, max_sessions + 1)
        self.retry = retry
        self.step_timeouts = step_timeouts or {}
        self.default_timeout = default_timeout
        self.lease = lease
        self.poll = poll
        # Called before steps of a dead owner are resumed (the runner kills that owner's agents here,
        # so two sessions never edit one worktree).
        self.before_resume = before_resume
        # Asked before a step with a concurrency key starts (e.g. the daily budget): False keeps it
        # pending, without spending an attempt.
        self.admit = admit
        # The failure handler talks to the tracker, which may refuse it: after this many tries the
        # handover is recorded in the run row only, and the run ends (it must not stay active for ever).
        self.handler_attempts = max(1, handler_attempts)
        self.handler_backoff = handler_backoff
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._running: dict[tuple[str, str], _Context] = {}
        self._running_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._draining = False
        self._pool: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []
        self._listeners: list[Callable[[], None]] = []
        super().__init__(db_path)

    def _retry_for(self, spec: StepSpec) -> RetryPolicy:
        return self.retry or spec.retry

    # --- submitting ------------------------------------------------------------------------
    def submit(self, inp: BaseModel) -> tuple[str, bool]:
        """Start a run for `inp` unless one is active for its key. Returns (run id, created)."""
        key = self.workflow.key(inp)
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM runs WHERE workflow=? AND key=? AND status IN ('queued','running','failing')",
                (self.workflow.name, key)).fetchone()
            if row:
                return row["id"], False
            run_id = f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"
            db.execute(
                "INSERT INTO runs(id, workflow, key, input, status, created_at, updated_at) "
                "VALUES (?,?,?,?, 'queued', ?, ?)",
                (run_id, self.workflow.name, key, inp.model_dump_json(), now, now))
            for pos, spec in enumerate(self.workflow.steps):
                db.execute(
                    "INSERT INTO steps(run_id, name, position, status, max_attempts, concurrency_key, timeout) "
                    "VALUES (?,?,?, 'pending', ?, ?, ?)",
                    (run_id, spec.name, pos, self._retry_for(spec).attempts, spec.concurrency_key,
                     self.step_timeouts.get(spec.name, self.default_timeout)))
        self.record_event(run_id, None, "run submitted", key=key)
        self._wake.set()
        return run_id, True

    # --- the loop ----------------------------------------------------------------------------
    def start(self) -> None:
        """Begin dispatching (in background threads). Unfinished runs of dead owners are resumed."""
        if self._pool is not None:
            return
        self._stop.clear()
        self._draining = False
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="step")
        for target, name in ((self._dispatch_loop, "dispatch"), (self._heartbeat_loop, "heartbeat")):
            t = threading.Thread(target=target, name=f"engine-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, grace: float = 0.0) -> None:
        """Stop claiming; let running steps go on for `grace` seconds, then cancel them.

        Cancelled and interrupted steps go back to pending without spending an attempt: the
        next start (of this or another runner) resumes them."""
        self._draining = True
        deadline = time.monotonic() + grace
        while self.running_steps() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._running_lock:
            for ctx in self._running.values():
                ctx.cancel.set()
        self._stop.set()
        self._wake.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()

    def cancel_running(self) -> None:
        """Cancel every step running here now (a second SIGINT); they go back to pending."""
        self._draining = True
        with self._running_lock:
            for ctx in self._running.values():
                ctx.cancel.set()

    def request_cancel(self, run_id: str, by: str) -> bool:
        """Ask for an active run to stop now, from any process. The engine running its step cancels
        it within a tick (killing the agent's process group); a run with no step running is failed
        here at once. Either way the failure handler runs with the reason `cancelled by <by>`.
        False when the run is not active."""
        with self._tx() as db:
            changed = db.execute("UPDATE runs SET cancel_requested=?, updated_at=? WHERE id=? AND status IN "
                                 "('queued','running','failing')", (by, time.time(), run_id)).rowcount
        if not changed:
            return False
        self.record_event(run_id, None, "cancel requested", by=by)
        self._honour_cancels()
        return True

    def _honour_cancels(self) -> None:
        rows = self._conn().execute(
            "SELECT id, cancel_requested FROM runs WHERE cancel_requested IS NOT NULL AND status IN "
            "('queued','running') AND workflow=?", (self.workflow.name,)).fetchall()
        for row in rows:
            with self._running_lock:
                mine = [ctx for (run_id, _), ctx in self._running.items() if run_id == row["id"]]
            if mine:
                for ctx in mine:
                    ctx.cancel.set()  # its _step_failed sees the request and fails the run
                continue
            busy = self._conn().execute(
                "SELECT owner, lease_until FROM steps WHERE run_id=? AND status='running'", (row["id"],)).fetchall()
            now = time.time()
            if any(b["lease_until"] and b["lease_until"] > now and _owner_alive(b["owner"]) for b in busy):
                continue  # another live runner runs it: that runner cancels it
            reason = f"cancelled by {row['cancel_requested']}"
            with self._tx() as db:
                step = db.execute("SELECT name FROM steps WHERE run_id=? AND status IN ('pending','running') "
                                  "ORDER BY position LIMIT 1", (row["id"],)).fetchone()
                name = step["name"] if step else self.workflow.steps[-1].name
                changed = db.execute(
                    "UPDATE runs SET status='failing', failed_step=?, error=?, updated_at=? "
                    "WHERE id=? AND status IN ('queued','running')", (name, reason, now, row["id"])).rowcount
                if changed:
                    db.execute("UPDATE steps SET status='failed', error=?, finished_at=?, owner=NULL, "
                               "lease_until=NULL WHERE run_id=? AND name=?", (reason, now, row["id"], name))
            if changed:
                self.record_event(row["id"], name, "step failed", reason=reason, retryable=False)
                self._finish_failed(row["id"])

    def running_steps(self) -> int:
        with self._running_lock:
            return len(self._running)

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Called (from an engine thread) whenever a step or run finishes."""
        self._listeners.append(fn)

    def _notify(self) -> None:
        for fn in self._listeners:
            try:
                fn()
            except Exception:  # noqa: BLE001 - a listener must not break the engine
                log.exception("listener failed")

    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._recover_orphans()
                self._honour_cancels()
                self._enforce_deadlines()
                if not self._draining:
                    for claim in self._claim_ready():
                        self._pool.submit(self._execute, *claim)
            except sqlite3.OperationalError as exc:  # busy beyond the timeout: try next tick
                log.warning("engine database busy", error=str(exc))
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("dispatch loop error")
            self._wake.wait(self.poll)
            self._wake.clear()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                with self._tx() as db:
                    db.execute("UPDATE steps SET lease_until=? WHERE owner=? AND status='running'",
                               (time.time() + self.lease, self.owner))
            except sqlite3.OperationalError as exc:
                log.warning("lease renewal failed", error=str(exc))

    def _recover_orphans(self) -> None:
        """Running steps whose owner is gone go back to pending, their attempt not spent."""
        now = time.time()
        rows = self._conn().execute(
            "SELECT run_id, name, owner, lease_until, attempt FROM steps WHERE status='running' AND owner != ?",
            (self.owner,)).fetchall()
        orphans = [row for row in rows
                    if not (row["lease_until"] is not None and row["lease_until"] > now and _owner_alive(row["owner"]))]
        if orphans and self.before_resume is not None:
            self.before_resume()
        for row in orphans:
            with self._tx() as db:
                changed = db.execute(
                    "UPDATE steps SET status='pending', owner=NULL, lease_until=NULL, deadline=NULL, "
                    "attempt=MAX(attempt-1, 0) WHERE run_id=? AND name=? AND status='running' AND owner=?",
                    (row["run_id"], row["name"], row["owner"])).rowcount
                if changed:
                    db.execute("UPDATE attempts SET status='interrupted', finished_at=? "
                               "WHERE run_id=? AND step=? AND attempt=? AND status='running'",
                               (now, row["run_id"], row["name"], row["attempt"]))
            if changed:
                self.record_event(row["run_id"], row["name"], "step resumed", previous_owner=row["owner"])
        # A run whose failure handler was interrupted: run it again.
        for row in self._conn().execute(
                "SELECT r.id FROM runs r WHERE r.status='failing' AND r.workflow=? AND NOT EXISTS "
                "(SELECT 1 FROM steps s WHERE s.run_id=r.id AND s.status='running')", (self.workflow.name,)):
            self._finish_failed(row["id"])

    def _enforce_deadlines(self) -> None:
        now = time.time()
        with self._running_lock:
            items = list(self._running.items())
        for (run_id, step), ctx in items:
            row = self._conn().execute("SELECT deadline FROM steps WHERE run_id=? AND name=?",
                                       (run_id, step)).fetchone()
            if row and row["deadline"] and now > row["deadline"] and not ctx.cancel.is_set():
                self.record_event(run_id, step, "step timed out", timeout=row["deadline"])
                ctx.timed_out = True
                ctx.cancel.set()

    def _claim_ready(self) -> list[tuple[str, str, int, str]]:
        """Claim every step that may start now, within the session cap and free workers."""
        free = self.workers - self.running_steps()
        if free <= 0:
            return []
        now = time.time()
        # A plain read first: the write lock is taken only when something may start, so idle runners
        # sharing the database do not take turns locking it several times a second.
        if not self._conn().execute(_READY_STEPS, (now, self.workflow.name, 1)).fetchone():
            return []
        claimed: list[tuple[str, str, int, str]] = []
        with self._tx() as db:
            candidates = db.execute(_READY_STEPS, (now, self.workflow.name, free)).fetchall()
            in_use: dict[str, int] = {}
            for row in candidates:
                key = row["concurrency_key"]
                if key is not None:
                    if self.admit is not None and not self.admit(key):
                        continue
                    if key not in in_use:
                        in_use[key] = db.execute(
                            "SELECT COUNT(*) FROM steps WHERE status='running' AND concurrency_key=?",
                            (key,)).fetchone()[0]
                    if in_use[key] >= self.max_sessions:
                        continue
                    in_use[key] += 1
                attempt = row["attempt"] + 1
                db.execute(
                    "UPDATE steps SET status='running', attempt=?, owner=?, lease_until=?, deadline=?, "
                    "started_at=?, error=NULL WHERE run_id=? AND name=?",
                    (attempt, self.owner, now + self.lease, now + row["timeout"], now, row["run_id"], row["name"]))
                db.execute("INSERT OR REPLACE INTO attempts(run_id, step, attempt, owner, started_at, status) "
                           "VALUES (?,?,?,?,?, 'running')", (row["run_id"], row["name"], attempt, self.owner, now))
                db.execute("UPDATE runs SET status='running', updated_at=? WHERE id=? AND status='queued'",
                           (now, row["run_id"]))
                claimed.append((row["run_id"], row["name"], attempt, row["input"]))
        return claimed

    # --- executing a step ------------------------------------------------------------------
    def _execute(self, run_id: str, step: str, attempt: int, input_json: str) -> None:
        spec = self.workflow.step(step)
        inp = self.workflow.input.model_validate_json(input_json)
        ctx = _Context(self, run_id, step, attempt, inp, self.workflow.key(inp))
        with self._running_lock:
            self._running[(run_id, step)] = ctx
        try:
            self.record_event(run_id, step, "step started", attempt=attempt)
        except sqlite3.Error as exc:  # a full disk must not lose the step: its outcome is what matters
            log.warning("could not record an event", run_id=run_id, step=step, error=str(exc))
        try:
            try:
                output = spec.fn(inp, ctx)
                if ctx.timed_out:
                    raise StepFailed(f"step {step} timed out after {self._timeout_of(run_id, step):g}s")
            except StepFailed as exc:
                if ctx.timed_out:
                    exc = StepFailed(f"step {step} timed out after {self._timeout_of(run_id, step):g}s",
                                     retryable=True, detail=exc.detail)
                self._persist(self._step_failed, run_id, spec, attempt, exc, ctx)
            except Exception as exc:  # noqa: BLE001 - a bug in a step fails the step, not the engine
                log.exception("step raised", run_id=run_id, step=step)
                self._persist(self._step_failed, run_id, spec, attempt,
                              StepFailed(f"{type(exc).__name__}: {exc}", retryable=True), ctx)
            else:
                self._persist(self._step_succeeded, run_id, spec, attempt, output)
        finally:
            with self._running_lock:
                self._running.pop((run_id, step), None)
            self._wake.set()
            self._notify()

    @property
    def steps_run_here(self) -> bool:
        return True

    def prepare(self) -> None:
        """Nothing more to check: the database was checked when it was opened."""

    def housekeeping(self, force: bool = False) -> list[str]:
        """Nothing: a cancelled run here runs its failure handler like any failed run."""
        return []
