"""The embedded engine: durable DAG runs in SQLite, no server needed.

Run and step state live in one SQLite file (WAL). A step is *claimed* by a process in a write
transaction (`BEGIN IMMEDIATE`) that also checks the concurrency cap, so the cap holds across
threads and across runner processes sharing the file. A claim carries a lease that its owner
renews; a step whose owner died (its pid gone, or its lease expired) goes back to pending and is
picked up again: a restarted runner resumes instead of starting over. Retries, backoff and
timeouts are data on each step row.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel

from beads_runner.errors import RunnerError
from workflows.spec import RetryPolicy, StepDeferred, StepFailed, StepParked, StepSpec, WorkflowSpec


class StateUnusable(RunnerError):
    """The embedded engine's database cannot be used (corrupt, truncated, not writable)."""

    def __init__(self, path: Path, exc: BaseException):
        detail = getattr(exc, "strerror", None) or str(exc)
        if isinstance(exc, OSError) or "readonly" in detail or "unable to open" in detail:
            super().__init__(f"the run state {path} cannot be written: {detail}",
                             fix=f"make {path.parent} writable by this user (and the filesystem it is on), "
                                 "then start again")
        else:
            super().__init__(
                f"the run state {path} is damaged: {detail}",
                fix=f"move it away (mv {path} {path}.damaged; also its -wal and -shm files) and start again: its "
                    "runs are forgotten, but their work is not (worktrees and branches stay, and claimed issues are "
                    "taken back)")

log = structlog.get_logger("beads_runner.engine")

ACTIVE = ("queued", "running", "failing")
# Pending steps whose parents have all succeeded and whose backoff is over, oldest run first.
_READY_STEPS = """
    SELECT s.run_id, s.name, s.attempt, s.concurrency_key, s.timeout, r.input FROM steps s
    JOIN runs r ON r.id = s.run_id
    WHERE s.status = 'pending' AND s.not_before <= ? AND r.status IN ('queued', 'running') AND r.workflow = ?
      AND r.cancel_requested IS NULL
      AND NOT EXISTS (SELECT 1 FROM steps p
                      WHERE p.run_id = s.run_id AND p.position < s.position AND p.status != 'succeeded')
    ORDER BY r.created_at, s.position LIMIT ?"""
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    key TEXT NOT NULL,
    input TEXT NOT NULL,
    status TEXT NOT NULL,            -- queued | running | failing | succeeded | failed | cancelled
    outcome TEXT,                    -- the last step's output (JSON) when succeeded
    failed_step TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    handler_until REAL               -- the failure handler is running (or was, until this time)
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_one_active_per_key ON runs(workflow, key)
    WHERE status IN ('queued', 'running', 'failing');
CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status, created_at);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs(workflow, created_at);
CREATE INDEX IF NOT EXISTS runs_by_key ON runs(workflow, key, created_at);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,            -- pending | running | succeeded | failed
    attempt INTEGER NOT NULL DEFAULT 0,   -- attempts started
    max_attempts INTEGER NOT NULL,
    concurrency_key TEXT,
    not_before REAL NOT NULL DEFAULT 0,
    timeout REAL NOT NULL,
    owner TEXT,
    lease_until REAL,
    deadline REAL,
    output TEXT,
    error TEXT,
    detail TEXT,
    notes TEXT,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (run_id, name)
);
CREATE INDEX IF NOT EXISTS steps_by_status ON steps(status, not_before);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    owner TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,            -- running | succeeded | failed | interrupted
    error TEXT,
    notes TEXT,
    PRIMARY KEY (run_id, step, attempt)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    step TEXT,
    ts REAL NOT NULL,
    event TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_by_run ON events(run_id, id);
"""
# Columns added after the first release: added to an existing database when it is opened.
RUN_COLUMNS = {
    "cancel_requested": "TEXT",          # who asked to cancel the run (and why); honoured by any engine
    "handler_failures": "INTEGER NOT NULL DEFAULT 0",  # failed tries of the failure handler
    "handler_error": "TEXT",             # the handler gave up: the handover is recorded here only
}


@dataclass
class StepView:
    name: str
    status: str
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
    status: str
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
            if s.status in ("running", "pending", "failed"):
                return s
        return None


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


class LocalEngine:
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
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
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
        self._local = threading.local()
        self._running: dict[tuple[str, str], _Context] = {}
        self._running_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._draining = False
        self._pool: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []
        self._listeners: list[Callable[[], None]] = []
        self._open_checked()

    def _open_checked(self) -> None:
        """Open the database and check it before anything is claimed: a corrupt, truncated or
        unwritable state.db is an error with its fix, not a traceback (or a crash mid-run)."""
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems))
            conn.executescript(SCHEMA)
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            self._local.conn = None
            raise StateUnusable(self.db_path, exc) from None

    def _migrate(self) -> None:
        have = {row["name"] for row in self._conn().execute("PRAGMA table_info(runs)")}
        for name, decl in RUN_COLUMNS.items():
            if name not in have:
                try:
                    self._conn().execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
                except sqlite3.OperationalError as exc:  # another process added it a moment ago
                    if "duplicate column" not in str(exc):
                        raise

    # --- storage ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front, so check-then-act is atomic across processes."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

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

    def active_run(self, key: str) -> str | None:
        row = self._conn().execute(
            "SELECT id FROM runs WHERE workflow=? AND key=? AND status IN ('queued','running','failing')",
            (self.workflow.name, key)).fetchone()
        return row["id"] if row else None

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
            # Not the issue's fault either (a provider's quota, its credentials): attempt not spent.
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

    # --- reading state -----------------------------------------------------------------------
    def _step_output(self, run_id: str, step: str) -> BaseModel:
        row = self._conn().execute("SELECT output, status FROM steps WHERE run_id=? AND name=?",
                                   (run_id, step)).fetchone()
        if row is None or row["status"] != "succeeded":
            raise RuntimeError(f"step {step} of run {run_id} has no output")
        return self.workflow.step(step).output.model_validate_json(row["output"])

    def _note(self, run_id: str, step: str, attempt: int, fields: dict[str, Any]) -> None:
        with self._tx() as db:
            row = db.execute("SELECT notes FROM attempts WHERE run_id=? AND step=? AND attempt=?",
                             (run_id, step, attempt)).fetchone()
            notes = json.loads(row["notes"]) if row and row["notes"] else {}
            notes.update(fields)
            db.execute("UPDATE attempts SET notes=? WHERE run_id=? AND step=? AND attempt=?",
                       (json.dumps(notes), run_id, step, attempt))
            db.execute("UPDATE steps SET notes=? WHERE run_id=? AND name=?", (json.dumps(notes), run_id, step))

    def record_event(self, run_id: str, step: str | None, event: str, **fields: Any) -> None:
        row = self._conn().execute("SELECT key FROM runs WHERE id=?", (run_id,)).fetchone()
        issue = row["key"] if row else None
        log.info(event, run_id=run_id, issue_id=issue, step=step, **fields)
        try:
            with self._tx() as db:
                db.execute("INSERT INTO events(run_id, step, ts, event, data) VALUES (?,?,?,?,?)",
                           (run_id, step, time.time(), event, json.dumps(fields, default=str)))
        except sqlite3.OperationalError as exc:
            log.warning("event not recorded", error=str(exc))

    def events(self, run_id: str, after_id: int = 0) -> list[dict[str, Any]]:
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

    def events_since(self, after_id: int, limit: int = 500) -> list[dict[str, Any]]:
        """Events of every run recorded after `after_id`, oldest first (for notifications)."""
        rows = self._conn().execute("SELECT * FROM events WHERE id>? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [{"id": r["id"], "run_id": r["run_id"], "step": r["step"], "ts": r["ts"], "event": r["event"],
                 **json.loads(r["data"] or "{}")} for r in rows]

    def get_run(self, run_id: str) -> RunView | None:
        row = self._conn().execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._view(row) if row else None

    def runs(self, statuses: tuple[str, ...] | None = None, limit: int = 100, key: str | None = None) -> list[RunView]:
        sql, args = "SELECT * FROM runs WHERE workflow=?", [self.workflow.name]
        if statuses:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args += list(statuses)
        if key is not None:
            sql += " AND key=?"
            args.append(key)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        return [self._view(r) for r in self._conn().execute(sql, args).fetchall()]

    def attempts(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM attempts WHERE run_id=? ORDER BY started_at", (run_id,)).fetchall()
        return [{**dict(r), "notes": json.loads(r["notes"]) if r["notes"] else {}} for r in rows]

    def sessions_in_use(self, key: str) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM steps WHERE status='running' AND concurrency_key=?",
                                    (key,)).fetchone()[0]

    def dashboard_url(self, run_id: str) -> str | None:
        """The embedded engine has no dashboard of its own (the console is it)."""
        return None

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

    def wait(self, run_id: str, timeout: float | None = None) -> RunView:
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
