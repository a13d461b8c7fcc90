"""status, logs -f and review on the Hatchet engine, against a fake client at the SDK boundary
(`hatchet.runs.list / get / subscribe_to_stream`): the same views as the embedded engine gives."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace as NS

import pytest

from beads_runner import status
from beads_runner.config import Config
from beads_runner.services import Services
from workflows import hatchet as hb

NOW = datetime.now(tz=UTC)


def task(name, status_, attempt=1, error=None, output=None):
    return NS(action_id=f"beads-task-execution:{name}", display_name=name, status=NS(value=status_),
              task_external_id=f"task-{name}",
              attempt=attempt, retry_count=attempt - 1, error_message=error,
              started_at=NOW - timedelta(seconds=30), finished_at=None if status_ == "RUNNING" else NOW,
              output=output)


def run_row(run_id, issue, status_):
    return NS(workflow_run_external_id=run_id, metadata=NS(id=run_id), status=NS(value=status_),
              additional_metadata={hb.META_WORKFLOW: "beads-task-execution", hb.META_REPO: "tviews",
                                   hb.META_ISSUE: issue}, created_at=NOW - timedelta(minutes=1),
              finished_at=None if status_ == "RUNNING" else NOW, input={"issue_id": issue}, error_message=None,
              output=None)


R1 = "1b4f0000-0000-4000-8000-000000000001"  # Hatchet run ids are UUIDs
R2 = "1b4f0000-0000-4000-8000-000000000002"


class FakeLogs:
    """The engine's task logs: what each step sent with ctx.log, one JSON object a line."""

    def list(self, task_run_id):
        lines = {"task-process": [NS(message=json.dumps({"event": "session starting", "attempt": 2}),
                                     created_at=NOW - timedelta(seconds=20))],
                 "task-check-deps": [NS(message="plain text from the SDK", created_at=NOW - timedelta(seconds=40))]}
        return NS(rows=lines.get(task_run_id, []))


class FakeRuns:
    def __init__(self):
        deps = {"proceed": True, "issue": {"id": "bd-1", "title": "Add a thing"}}
        self.details = {
            R1: NS(run=run_row(R1, "bd-1", "RUNNING"), tasks=[
                task("check-deps", "COMPLETED", output=deps), task("process", "RUNNING", attempt=2)]),
            R2: NS(run=run_row(R2, "bd-2", "COMPLETED"), tasks=[
                task("check-deps", "COMPLETED"), task("process", "COMPLETED"), task("verify", "COMPLETED"),
                task("commit", "COMPLETED", output={"close_reason": "Landed abcd1234 on main (gates: none)"})]),
        }

    def list_and(self, wanted, limit, meta, before=None):
        """What the engine's REST list answers with the AND operator."""
        return self.list(statuses=wanted, limit=limit, additional_metadata=meta).rows

    def list(self, statuses=None, limit=100, additional_metadata=None, **_):
        wanted = {s.value for s in statuses or []}
        issue = (additional_metadata or {}).get(hb.META_ISSUE)
        rows = [d.run for d in self.details.values()
                if (not wanted or d.run.status.value in wanted)
                and (issue is None or d.run.additional_metadata[hb.META_ISSUE] == issue)]
        return NS(rows=rows[:limit])

    def get(self, run_id):
        return self.details[run_id]

    async def subscribe_to_stream(self, run_id):
        for payload in (json.dumps({"step": "process", "event": "session starting", "attempt": 2}),
                        json.dumps({"step": "process", "event": "session finished", "ok": True})):
            yield payload


@pytest.fixture
def svc(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    services = Services(repo, Config.model_validate(
        {"engine": {"kind": "hatchet", "max_sessions": 3, "hatchet": {"namespace": "tviews"}}}))
    runs = FakeRuns()
    engine = hb.HatchetEngine(NS(runs=runs, logs=FakeLogs()), workflow=None, services=services)
    engine._list_rows = runs.list_and
    monkeypatch.setattr(hb, "hatchet_engine", lambda _svc: engine)
    return services


def test_status_reads_hatchet_runs_and_counts_sessions(svc):
    data = status.collect_status(svc)
    running = data["running"]
    assert [r["issue_id"] for r in running] == ["bd-1"]
    assert running[0]["step"] == "process" and running[0]["attempt"] == 2
    assert (data["sessions"]["in_use"], data["sessions"]["cap"]) == (1, 3)
    text = status.render_text(status.render_status(data))
    assert "bd-1" in text and "process" in text


def test_logs_follow_streams_the_step_events(svc):
    lines = list(status.stream_logs(svc, R1, follow=True))
    assert any("session starting" in line and "attempt=2" in line for line in lines)
    assert any("session finished" in line for line in lines)
    raw = [json.loads(line) for line in status.stream_logs(svc, R1, follow=True, as_json=True)]
    assert [e["event"] for e in raw] == ["session starting", "session finished"]


def test_attempts_come_from_the_tasks(svc):
    engine = hb.hatchet_engine(svc)
    attempts = engine.attempts(R1)
    assert [(a["step"], a["attempt"], a["status"]) for a in attempts] == [
        ("check-deps", 1, "succeeded"), ("process", 2, "running")]
    # Step events are read back from the engine's task logs, in time order, numbered for `logs -f`.
    events = engine.events(R1)
    assert [(e["id"], e["step"], e["event"]) for e in events] == [
        (1, "check-deps", "plain text from the SDK"), (2, "process", "session starting")]
    assert engine.events(R1, after_id=1)[0]["attempt"] == 2
    assert engine.events("bd-1") == []  # an issue id is no run id: nothing is asked of the engine
