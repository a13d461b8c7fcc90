"""The embedded engine's SQLite state: its schema, opening and checking it, transactions."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from beads_runner.errors import RunnerError

log = structlog.get_logger("beads_runner.engine")


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
RUN_COLUMNS = {
    "cancel_requested": "TEXT",          # who asked to cancel the run (and why); honoured by any engine
    "handler_failures": "INTEGER NOT NULL DEFAULT 0",  # failed tries of the failure handler
    "handler_error": "TEXT",             # the handler gave up: the handover is recorded here only
}


class Store:
    """The one owner of state.db: every read and write of its tables goes through this class (and
    the engine built on it). Thread-safe: one connection per thread."""

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
