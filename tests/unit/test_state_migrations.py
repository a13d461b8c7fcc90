"""state.db carries a schema version and is migrated in order when opened: a database written by the
first release (no version, none of the later columns) opens, is brought up to date, and its runs
read through the engine as before."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from pydantic import BaseModel

from beads_runner.errors import RunnerError
from workflows.engine import SUCCEEDED
from workflows.local import SCHEMA_VERSION, LocalEngine, Store
from workflows.spec import StepSpec, WorkflowSpec

# The tables as the first release created them, written out here (not taken from the code), so a
# migration that no longer fits the databases out there fails this test.
FIRST_RELEASE = """
CREATE TABLE runs (id TEXT PRIMARY KEY, workflow TEXT NOT NULL, key TEXT NOT NULL, input TEXT NOT NULL,
    status TEXT NOT NULL, outcome TEXT, failed_step TEXT, error TEXT, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, finished_at REAL, handler_until REAL);
CREATE UNIQUE INDEX runs_one_active_per_key ON runs(workflow, key) WHERE status IN ('queued', 'running', 'failing');
CREATE INDEX runs_by_status ON runs(status, created_at);
CREATE TABLE steps (run_id TEXT NOT NULL REFERENCES runs(id), name TEXT NOT NULL, position INTEGER NOT NULL,
    status TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL, concurrency_key TEXT,
    not_before REAL NOT NULL DEFAULT 0, timeout REAL NOT NULL, owner TEXT, lease_until REAL, deadline REAL,
    output TEXT, error TEXT, detail TEXT, notes TEXT, started_at REAL, finished_at REAL, PRIMARY KEY (run_id, name));
CREATE INDEX steps_by_status ON steps(status, not_before);
CREATE TABLE attempts (run_id TEXT NOT NULL, step TEXT NOT NULL, attempt INTEGER NOT NULL, owner TEXT,
    started_at REAL NOT NULL, finished_at REAL, status TEXT NOT NULL, error TEXT, notes TEXT,
    PRIMARY KEY (run_id, step, attempt));
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, step TEXT, ts REAL NOT NULL,
    event TEXT NOT NULL, data TEXT);
CREATE INDEX events_by_run ON events(run_id, id);
"""


class Inp(BaseModel):
    key: str


class Out(BaseModel):
    value: str


def flow() -> WorkflowSpec:
    return WorkflowSpec(name="toy", input=Inp, steps=(StepSpec("a", lambda inp, ctx: Out(value="a"), Out),),
                        key=lambda inp: inp.key)


def first_release_db(path: Path, *, extra_columns: str = "") -> None:
    """A database as the first release left it: one finished run, its step, its try and its events."""
    db = sqlite3.connect(path)
    db.executescript(FIRST_RELEASE + extra_columns)
    db.execute("INSERT INTO runs(id, workflow, key, input, status, outcome, created_at, updated_at, finished_at) "
               "VALUES ('run-old', 'toy', 't-1', ?, 'succeeded', ?, 100, 110, 110)",
               (json.dumps({"key": "t-1"}), json.dumps({"value": "a"})))
    db.execute("INSERT INTO steps(run_id, name, position, status, attempt, max_attempts, timeout, output, notes, "
               "started_at, finished_at) VALUES ('run-old', 'a', 0, 'succeeded', 1, 3, 60, ?, ?, 101, 109)",
               (json.dumps({"value": "a"}), json.dumps({"session_id": "ses-1"})))
    db.execute("INSERT INTO attempts(run_id, step, attempt, owner, started_at, finished_at, status, notes) "
               "VALUES ('run-old', 'a', 1, 'host:1:x', 101, 109, 'succeeded', ?)",
               (json.dumps({"session_id": "ses-1"}),))
    db.execute("INSERT INTO events(run_id, step, ts, event, data) VALUES ('run-old', NULL, 110, 'run succeeded', '{}')")
    db.commit()
    db.close()


def columns(path: Path, table: str) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    finally:
        db.close()


def test_a_first_release_database_is_migrated_and_its_run_still_reads(tmp_path):
    path = tmp_path / "state.db"
    first_release_db(path)
    assert Store(path, read_only=True).schema_version() == 0
    engine = LocalEngine(path, flow())
    assert engine.schema_version() == SCHEMA_VERSION
    assert {"cancel_requested", "handler_failures", "handler_error"} <= columns(path, "runs")
    run = engine.get_run("run-old")
    assert run is not None and run.status == SUCCEEDED and run.key == "t-1" and run.outcome == {"value": "a"}
    assert run.cancel_requested is None and run.handler_error is None
    assert [(s.name, s.status, s.attempt, s.notes) for s in run.steps] == [
        ("a", "succeeded", 1, {"session_id": "ses-1"})]
    assert [(t["step"], t["attempt"], t["status"]) for t in engine.attempts("run-old")] == [("a", 1, "succeeded")]
    assert [e["event"] for e in engine.events("run-old")] == ["run succeeded"]
    assert engine.counts()[SUCCEEDED] == 1
    # The migrated database takes new runs, with the later columns in use.
    run_id, created = engine.submit(Inp(key="t-2"))
    assert created and engine.request_cancel(run_id, "a person")
    assert engine.get_run(run_id).cancel_requested == "a person"


def test_a_database_that_had_columns_added_on_open_is_migrated_too(tmp_path):
    # Releases between the first and the versioned one added runs.cancel_requested when they opened it.
    path = tmp_path / "state.db"
    first_release_db(path, extra_columns="ALTER TABLE runs ADD COLUMN cancel_requested TEXT;")
    engine = LocalEngine(path, flow())
    assert engine.schema_version() == SCHEMA_VERSION
    assert engine.get_run("run-old").status == SUCCEEDED
    # Opening it again changes nothing (no migration runs twice).
    assert LocalEngine(path, flow()).schema_version() == SCHEMA_VERSION


def test_a_new_database_starts_at_the_current_version(tmp_path):
    engine = LocalEngine(tmp_path / "state.db", flow())
    assert engine.schema_version() == SCHEMA_VERSION
    assert engine.counts() == {"queued": 0, "running": 0, "failing": 0, "succeeded": 0, "failed": 0, "cancelled": 0}


def test_a_database_from_a_newer_release_is_refused_with_its_fix(tmp_path):
    path = tmp_path / "state.db"
    LocalEngine(path, flow())
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RunnerError) as err:
        LocalEngine(path, flow())
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this beads-runner knows" in err.value.message
    assert "upgrade beads-runner" in err.value.fix


def test_step_outputs_written_with_skipped_by_earlier_releases_read_as_no_work():
    # The field was `skipped` until Hatchet's own meaning of an output's "skipped" (a task it skipped)
    # made it `no_work`; runs recorded before still read, and new outputs never say "skipped".
    from workflows.task_flow import CommitOutput, ProcessOutput, did_no_work

    assert ProcessOutput.model_validate_json('{"skipped": true}').no_work is True
    assert "skipped" not in ProcessOutput(no_work=True).model_dump()
    assert did_no_work({"skipped": True, "reason": "not ours"}) and did_no_work(CommitOutput(no_work=True).model_dump())
    assert not did_no_work({"sha": "abc"}) and not did_no_work(None)


def test_the_parking_tables_are_a_migration_and_a_park_written_before_versions_survives(tmp_path):
    """The parks tables once were created by parking.py on first use, outside the schema version. A
    file that has them (with a park in force) migrates without losing it; a fresh file gets them from
    the migrations, and parking reads and writes them through the state owner."""
    from beads_runner.parking import Parking

    old = tmp_path / "old" / "state.db"
    old.parent.mkdir()
    first_release_db(old, extra_columns="""
        CREATE TABLE parks (scope TEXT PRIMARY KEY, kind TEXT NOT NULL, reason TEXT NOT NULL, since REAL NOT NULL,
            until REAL, issue_id TEXT, run_id TEXT, strikes INTEGER NOT NULL DEFAULT 1,
            active INTEGER NOT NULL DEFAULT 1, ended_at REAL);
        CREATE TABLE budget_raises (day TEXT PRIMARY KEY, usd REAL NOT NULL, at REAL NOT NULL);
        INSERT INTO parks(scope, kind, reason, since, until) VALUES ('provider:x', 'auth', 'key refused', 50, NULL);
        """)
    assert LocalEngine(old, flow()).schema_version() == SCHEMA_VERSION
    kept = Parking(old.parent).blocking("provider:x", now=1e12)
    assert kept is not None and kept.reason == "key refused" and kept.until is None

    fresh = tmp_path / "fresh"
    parking = Parking(fresh)  # before any engine: the owner creates the file and its whole schema
    parking.park("provider:y", "quota", "429 from the provider", reset_at=None, backoff=60, backoff_max=600, now=1000.0)
    assert Store(fresh / "state.db", read_only=True).schema_version() == SCHEMA_VERSION
    assert {"scope", "strikes", "ended_at"} <= columns(fresh / "state.db", "parks")
    assert parking.blocking("provider:y", now=1001.0).reason == "429 from the provider"
