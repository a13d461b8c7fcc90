"""A person's word wins: when an issue stops being the runner's, and what the runner then leaves alone."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from beads_runner.config import Config
from beads_runner.reconcile import IssueWatch, check_issue, superseded_reason
from beads_runner.services import Services, register_services
from beads_runner.tracker.base import Issue
from beads_runner.tracker.jsonl import JsonlTracker
from tests.helpers import new_repo
from workflows.spec import StepFailed
from workflows.task_flow import TaskInput, on_failure


@pytest.mark.parametrize(("status", "assignee", "expected"), [
    ("in_progress", "beads-runner", None),
    ("closed", "beads-runner", "a person closed the issue"),
    ("deferred", "", "a person deferred the issue"),
    ("tombstone", "", "the issue was deleted"),
    ("in_progress", "alice", "the issue was assigned to alice"),
    ("open", "", "the issue is open, no longer claimed by beads-runner"),
])
def test_only_an_issue_in_progress_under_our_actor_is_still_ours(status, assignee, expected):
    why = superseded_reason(Issue(id="x-1", status=status, assignee=assignee), "beads-runner")
    assert why == expected or (expected and why.startswith(expected))


@pytest.fixture
def tracker(tmp_path: Path) -> JsonlTracker:
    repo = new_repo(tmp_path / "repo")
    (repo / ".beads").mkdir()
    (repo / ".beads" / "issues.jsonl").write_text("")
    t = JsonlTracker(repo)
    t.create("Work", id="x-1")
    t.claim("x-1")
    return t


def test_a_deleted_issue_is_superseded_and_a_tracker_error_is_not(tracker, monkeypatch):
    assert check_issue(tracker, "x-1") is None
    assert check_issue(tracker, "x-404") == "the issue was deleted"
    from beads_runner.errors import TrackerBusy

    def busy(_issue_id):
        raise TrackerBusy("locked")

    monkeypatch.setattr(tracker, "show", busy)
    assert check_issue(tracker, "x-1") is None  # no news is not a person's word


def test_the_watch_stops_the_step_when_a_person_closes_the_issue(tracker):
    person = JsonlTracker(tracker.repo, actor="alice")
    with IssueWatch(tracker, "x-1", interval=0.1) as watch:
        assert not watch.stop.wait(0.3) and watch.reason is None
        person.close("x-1", "done by hand")
        assert watch.stop.wait(10)
    assert watch.reason.startswith("a person closed the issue")


def test_the_watch_relays_the_engines_cancel(tracker):
    cancel = threading.Event()
    with IssueWatch(tracker, "x-1", interval=60, cancel=cancel) as watch:
        cancel.set()
        assert watch.stop.wait(5)
    assert watch.reason is None  # cancelled, not superseded


def test_a_failed_run_leaves_an_issue_a_person_took_exactly_as_they_set_it(tracker):
    register_services(Services(tracker.repo.resolve(), Config(), tracker_override=tracker))
    JsonlTracker(tracker.repo, actor="alice").close("x-1", "won't do")
    before = tracker.show("x-1")
    on_failure(TaskInput(issue_id="x-1", repo=str(tracker.repo)), "run-1", "verify",
               StepFailed("quality gates failed"), 1)
    assert tracker.show("x-1") == before and tracker.comments("x-1") == []
