"""The embedded engine's SQLite state (state.db): its schema and migrations, opening and checking it,
transactions. The one owner of that file's run tables."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from beads_runner.errors import RunnerError
from workflows.engine import FINISHED, TryView

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


# The first release's tables (migration 1). Later columns come from the migrations below.
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


# The tables of beads_runner/parking.py (created before schema versions by parking itself, hence
# IF NOT EXISTS: an older file may have them already).
PARKING_SCHEMA = """
CREATE TABLE IF NOT EXISTS parks (
    scope TEXT PRIMARY KEY,          -- provider:<name>
    kind TEXT NOT NULL,              -- quota | auth
    reason TEXT NOT NULL,
    since REAL NOT NULL,
    until REAL,                      -- NULL: until `beads-runner resume`
    issue_id TEXT,
    run_id TEXT,
    strikes INTEGER NOT NULL DEFAULT 1,  -- parks in a row without a session getting through
    active INTEGER NOT NULL DEFAULT 1,   -- 0: over (resumed, or the time passed and it was announced)
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS budget_raises (
    day TEXT PRIMARY KEY,            -- UTC day
    usd REAL NOT NULL,
    at REAL NOT NULL
);
"""


def _create_first_tables(db: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def _run_columns(**columns: str) -> Callable[[sqlite3.Connection], None]:
    def add(db: sqlite3.Connection) -> None:
        have = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        for name, decl in columns.items():
            if name not in have:  # a database opened by a release that added columns on open has them
                db.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
    return add


# The schema's history, oldest first: a database at version n (PRAGMA user_version) gets the
# migrations after the n-th, in one transaction, and is then at SCHEMA_VERSION. Append only: a
# released migration never changes. Databases of the first releases are at version 0 (they had no
# version), with some of the later columns already added on open; the migrations allow for that.
MIGRATIONS: tuple[tuple[str, Callable[[sqlite3.Connection], None]], ...] = (
    ("runs, steps, attempts and events", _create_first_tables),
    ("runs.cancel_requested: who asked to cancel the run (and why); honoured by any engine",
     _run_columns(cancel_requested="TEXT")),
    ("runs.handler_failures and handler_error: a failure handler that gave up records the handover here",
     _run_columns(handler_failures="INTEGER NOT NULL DEFAULT 0", handler_error="TEXT")),
    ("runs indexed by (workflow, created_at) and (workflow, key, created_at): the runs list and an issue's "
     "runs stay fast with 10,000 runs (the console, status)",
     lambda db: (db.execute("CREATE INDEX IF NOT EXISTS runs_by_created ON runs(workflow, created_at)"),
                 db.execute("CREATE INDEX IF NOT EXISTS runs_by_key ON runs(workflow, key, created_at)"))),
    ("parks and budget_raises: a provider's quota or refused credentials park sessions; a person raises "
     "the day's budget (beads_runner/parking.py reads and writes them)",
     lambda db: [db.execute(statement) for statement in PARKING_SCHEMA.split(";") if statement.strip()]),
)
SCHEMA_VERSION = len(MIGRATIONS)


class StateTooNew(RunnerError):
    def __init__(self, path: Path, version: int):
        super().__init__(f"the run state {path} has schema version {version}, newer than this beads-runner "
                         f"knows ({SCHEMA_VERSION}): a newer release wrote it",
                         fix="upgrade beads-runner to the release that wrote it (or newer), on every machine "
                             "sharing this repository")


class Store:
    """The one owner of state.db: every read and write of its tables goes through this class (and
    the engine built on it); nothing else opens the file with SQL. Thread-safe: one connection per
    thread. `read_only` opens an existing file for reading only, unchecked and not migrated (for
    frequent readers such as the daily budget; only first-release columns may be read so)."""

    def __init__(self, db_path: Path | str, *, read_only: bool = False):
        self.db_path = Path(db_path)
        self.read_only = read_only
        self._local = threading.local()
        if not read_only:
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
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            self._local.conn = None
            raise StateUnusable(self.db_path, exc) from None

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, for the modules whose tables the migrations above create and whose
        queries are their own (beads_runner/parking.py): the file, its schema and its connections
        stay this class's."""
        return self._conn()

    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION: every migration not yet applied, in order, in one
        write transaction (several processes opening one old file migrate it once)."""
        if self.schema_version() == SCHEMA_VERSION:
            return  # the usual case: no write lock taken
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateTooNew(self.db_path, version)
            for number, (what, migrate) in enumerate(MIGRATIONS[version:], version + 1):
                migrate(db)
                log.info("run state migrated", path=str(self.db_path), version=number, change=what)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # --- storage ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None and self.read_only:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10.0, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        elif conn is None:
            conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def limit_cache_here(self, kib: int) -> None:
        """Keep at most `kib` KiB of database pages cached on this thread's connection (SQLite's
        default is 2 MiB a connection). For a reader that must stay small inside the daemon: the
        console's worker thread, whose reads are a page of runs by index."""
        if int(kib) < 1:
            raise ValueError(f"cache of {kib} KiB: give 1 KiB or more")
        self._conn().execute(f"PRAGMA cache_size = -{int(kib)}")

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

    def tries(self, step: str | None = None, *, run_id: str | None = None,
              since: float | None = None) -> list[TryView]:
        """Tries of every run (or one), of one step, that ended (or began, if running) at or after
        `since`: what the daily budget and the cost reports count."""
        sql, args = "SELECT * FROM attempts WHERE 1=1", []
        if step is not None:
            sql += " AND step=?"
            args.append(step)
        if run_id is not None:
            sql += " AND run_id=?"
            args.append(run_id)
        if since is not None:
            sql += " AND COALESCE(finished_at, started_at) >= ?"
            args.append(since)
        return [_try(r) for r in self._conn().execute(sql + " ORDER BY started_at", args).fetchall()]

    def import_history(self, runs: Iterable[Mapping[str, Any]]) -> int:
        """Record finished runs made elsewhere (a history carried over, a bench's or a test's), in
        one transaction; returns how many. Nothing is written if any run is refused: an id already
        here, a run not finished (succeeded, failed, cancelled: an imported run is never dispatched).

        A run: `id`, `workflow`, `key`, `input` (dict), `status`, `created_at`, `finished_at`, and
        optional `outcome` (dict), `failed_step`, `error`, `steps`. A step (in workflow order): `name`,
        `status` (pending, succeeded, failed), `attempt`, `max_attempts`, `timeout`, and optional
        `concurrency_key`, `output` (dict), `error`, `started_at`, `finished_at`, `notes` (dict, its
        last try's: tokens, cost). A step that started is recorded with that one try (its last) and
        one "step started" event."""
        count = 0
        with self._tx() as db:
            for run in runs:
                if run["status"] not in FINISHED:
                    raise ValueError(f"run {run['id']} is {run['status']}: only finished runs "
                                     f"({', '.join(FINISHED)}) can be imported")
                if db.execute("SELECT 1 FROM runs WHERE id=?", (run["id"],)).fetchone():
                    raise ValueError(f"run {run['id']} is already recorded: import each run once")
                db.execute("INSERT INTO runs(id, workflow, key, input, status, outcome, failed_step, error, "
                           "created_at, updated_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                           (run["id"], run["workflow"], run["key"], json.dumps(run["input"]), run["status"],
                            _json_or_none(run.get("outcome")), run.get("failed_step"), run.get("error"),
                            run["created_at"], run["finished_at"], run["finished_at"]))
                for position, step in enumerate(run.get("steps", ())):
                    started = step.get("started_at")
                    db.execute("INSERT INTO steps(run_id, name, position, status, attempt, max_attempts, "
                               "concurrency_key, timeout, output, error, started_at, finished_at) "
                               "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                               (run["id"], step["name"], position, step["status"], step["attempt"],
                                step["max_attempts"], step.get("concurrency_key"), step["timeout"],
                                _json_or_none(step.get("output")), step.get("error"), started,
                                step.get("finished_at")))
                    if started is None:
                        continue
                    db.execute("INSERT INTO attempts(run_id, step, attempt, started_at, finished_at, status, "
                               "error, notes) VALUES (?,?,?,?,?,?,?,?)",
                               (run["id"], step["name"], step["attempt"], started, step.get("finished_at"),
                                step["status"], step.get("error"), json.dumps(step.get("notes") or {})))
                    db.execute("INSERT INTO events(run_id, step, ts, event, data) VALUES (?,?,?,?,?)",
                               (run["id"], step["name"], started, "step started",
                                json.dumps({"attempt": step["attempt"]})))
                count += 1
        return count

    def close(self) -> None:
        """Close this thread's connection (the others close with their threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _try(r: sqlite3.Row) -> TryView:
    try:
        notes = json.loads(r["notes"]) if r["notes"] else {}
    except ValueError:
        notes = {}
    return TryView(run_id=r["run_id"], step=r["step"], attempt=r["attempt"], status=r["status"], error=r["error"],
                   started_at=r["started_at"], finished_at=r["finished_at"],
                   notes=notes if isinstance(notes, dict) else {})
