"""Store.import_history: finished runs made elsewhere are recorded through the state's owner and read
back through the engine like its own; a run in flight or one already there is refused, and then
nothing is written."""

from __future__ import annotations

import pytest

from workflows.local import LocalEngine
from workflows.task_flow import SESSION_KEY, TASK_FLOW


def _run(run_id: str, key: str, status: str, created: float) -> dict:
    steps = [{"name": "check-deps", "status": "succeeded", "attempt": 1, "max_attempts": 3, "timeout": 60,
              "started_at": created, "finished_at": created + 1, "output": {"proceed": True}},
             {"name": "process", "status": "failed" if status == "failed" else "succeeded", "attempt": 2,
              "max_attempts": 3, "timeout": 3600, "concurrency_key": SESSION_KEY, "started_at": created + 1,
              "finished_at": created + 50, "error": "gates fail" if status == "failed" else None,
              "notes": {"tokens": 10, "cost": 0.5}},
             {"name": "verify", "status": "pending", "attempt": 0, "max_attempts": 3, "timeout": 600},
             {"name": "commit", "status": "pending", "attempt": 0, "max_attempts": 3, "timeout": 60}]
    return {"id": run_id, "workflow": TASK_FLOW.name, "key": key, "input": {"issue_id": key, "repo": "/r"},
            "status": status, "created_at": created, "finished_at": created + 50, "steps": steps,
            "failed_step": "process" if status == "failed" else None,
            "error": "gates fail" if status == "failed" else None,
            "outcome": {"sha": "ab" * 20} if status == "succeeded" else None}


def test_imported_runs_read_back_through_the_engine_with_their_tries_and_events(tmp_path):
    engine = LocalEngine(tmp_path / "state.db", TASK_FLOW)
    assert engine.import_history([_run("run-a", "t-1", "succeeded", 1000.0),
                                  _run("run-b", "t-2", "failed", 2000.0)]) == 2
    assert [r.id for r in engine.runs()] == ["run-b", "run-a"]
    failed = engine.get_run("run-b")
    assert failed.status == "failed" and failed.failed_step == "process" and failed.finished_at == 2050.0
    assert [(s.name, s.status, s.attempt) for s in failed.steps] == [
        ("check-deps", "succeeded", 1), ("process", "failed", 2), ("verify", "pending", 0), ("commit", "pending", 0)]
    tries = engine.attempts("run-b")
    assert [(t["step"], t["attempt"], t["status"]) for t in tries] == [("check-deps", 1, "succeeded"),
                                                                        ("process", 2, "failed")]
    assert tries[1]["notes"] == {"tokens": 10, "cost": 0.5}
    assert [e["event"] for e in engine.events("run-b")] == ["step started", "step started"]
    assert engine.get_run("run-a").outcome == {"sha": "ab" * 20}
    assert engine.sessions_in_use(SESSION_KEY) == 0 and not engine.has_active_runs()


@pytest.mark.parametrize("bad, words", [
    (_run("run-c", "t-3", "running", 3000.0), "only finished runs"),
    (_run("run-a", "t-1", "succeeded", 1000.0), "already recorded"),
])
def test_a_run_in_flight_or_already_there_is_refused_and_nothing_is_written(tmp_path, bad, words):
    engine = LocalEngine(tmp_path / "state.db", TASK_FLOW)
    engine.import_history([_run("run-a", "t-1", "succeeded", 1000.0)])
    with pytest.raises(ValueError, match=words):
        engine.import_history([_run("run-d", "t-4", "failed", 500.0), bad])
    assert [r.id for r in engine.runs()] == ["run-a"]
