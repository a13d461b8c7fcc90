"""`run_reason`: the reason codes a run in flight gets (explain and status --json share them)."""

from __future__ import annotations

from beads_runner.explain import queue_positions, run_reason
from beads_runner.parking import Park
from workflows.local import RunView, StepView

NOW = 1_800_000_000.0


def step(name, status="pending", attempt=0, not_before=0.0, error=None, notes=None):
    return StepView(name=name, status=status, attempt=attempt, max_attempts=3, error=error, notes=notes or {},
                    started_at=NOW - 5 if status == "running" else None, finished_at=None, not_before=not_before,
                    output=None)


def run(run_id, *steps, status="running", created=NOW, cancel=None):
    return RunView(id=run_id, key=f"t-{run_id}", status=status, input={}, created_at=created, updated_at=created,
                   finished_at=None, failed_step=None, error=None, outcome=None, steps=list(steps),
                   cancel_requested=cancel)


def done():
    return step("check-deps", "succeeded", 1)


def test_a_running_session_names_its_step_try_and_session():
    r = run_reason(run("a", done(), step("process", "running", 2, notes={"session_id": "ses_1"})), now=NOW)
    assert r.code == "running" and r.details["attempt"] == 2 and r.details["session_id"] == "ses_1"
    assert "try 2 of 3" in r.summary and "ses_1" in r.summary and "cancel" in r.change


def test_waiting_for_a_session_gives_the_place_in_the_queue():
    class Engine:
        def runs(self, statuses=None, limit=0):
            return [run("late", done(), step("process"), created=NOW + 2),
                    run("early", done(), step("process"), created=NOW + 1),
                    run("busy", done(), step("process", "running", 1)),
                    run("checking", step("check-deps", "running", 1))]

    positions = queue_positions(Engine())
    assert positions == {"early": 1, "late": 2}
    r = run_reason(run("late", done(), step("process"), created=NOW + 2), now=NOW, queue_position=positions["late"])
    assert r.code == "waiting_for_session" and r.details["queue_position"] == 2 and "number 2" in r.summary


def test_a_failed_try_waits_for_its_retry():
    r = run_reason(run("a", done(), step("process", attempt=1, not_before=NOW + 30, error="crashed")), now=NOW)
    assert r.code == "retry_wait" and r.details["retry_at"] == NOW + 30 and "crashed" in r.summary


def test_a_session_waiting_on_a_parked_provider_is_parked():
    park = Park(scope="provider:openai", kind="quota", reason="You exceeded your current quota", since=NOW,
                until=NOW + 60)
    r = run_reason(run("a", done(), step("process")), now=NOW, parks=[park])
    assert r.code == "parked" and r.details["until"] == NOW + 60 and "resumes by itself" in r.change


def test_a_cancel_in_progress_says_who_asked():
    r = run_reason(run("a", done(), step("process", "running", 1), cancel="alice"), now=NOW)
    assert r.code == "cancelling" and "alice" in r.summary
