"""The daemon's poll when the tracker misbehaves (busy, failing, claims lost, the engine refusing a run),
`engine.prefetch`, and the `.beads/` change watcher that wakes it between polls."""

from __future__ import annotations

import os
import textwrap
import threading
import time
from pathlib import Path

import pytest

from beads_runner.config import load_config
from beads_runner.daemon import ChangeWatcher, Runner
from beads_runner.errors import ClaimConflict, RunnerError, TrackerBusy, TrackerError, TrackerUnavailable
from beads_runner.services import Services, register_services
from beads_runner.tracker.jsonl import JsonlTracker
from tests.helpers import command_agent_repo

AGENT = textwrap.dedent("""\
    import os, sys
    sys.stdin.read()
    open(f"work-{os.environ['BEADS_ISSUE_ID']}.txt", "w").write("done\\n")
""")


@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / "agent.py").write_text(AGENT)
    return command_agent_repo(tmp_path / "repo", tmp_path / "agent.py", engine="max_sessions = 2\nprefetch = 1\n")


class ScriptedTracker(JsonlTracker):
    """The JSONL tracker, except that `claim_next` (and `claimed`) first raise the errors queued for them."""

    def __init__(self, repo: Path, errors: list[Exception] | None = None, claimed_error: Exception | None = None):
        super().__init__(repo)
        self.errors = list(errors or [])
        self.claimed_error = claimed_error
        self.claim_calls = 0

    def claim_next(self):
        self.claim_calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return super().claim_next()

    def claimed(self):
        if self.claimed_error is not None:
            raise self.claimed_error
        return super().claimed()


def runner(repo: Path, tracker: JsonlTracker) -> Runner:
    return Runner(register_services(Services(repo, load_config(repo), tracker_override=tracker)))


# --- poll errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [TrackerBusy("database is locked"), TrackerUnavailable("bd: no such file"),
                                   TrackerError("bd exited 1: boom")], ids=["busy", "unavailable", "error"])
def test_a_failing_tracker_ends_the_pass_says_why_and_claims_nothing(repo, error):
    tracker = ScriptedTracker(repo, [error])
    tracker.create("Ready", id="t-1")
    r = runner(repo, tracker)
    result = r.poll_once()
    assert result.tracker_error == error.message
    assert result.submitted == [] and tracker.claim_calls == 1  # the pass stopped at the first failure
    assert tracker.show("t-1").status == "open" and r.engine.runs() == []
    again = r.poll_once()  # the next poll asks again, and this time the tracker answers
    assert again.tracker_error is None and len(again.submitted) == 1
    assert tracker.show("t-1").status == "in_progress"


def test_lost_claims_are_skipped_then_the_pass_gives_up_after_five_in_a_row(repo):
    tracker = ScriptedTracker(repo, [ClaimConflict("t-1 claimed by alice")] * 2)
    tracker.create("Ready", id="t-1")
    r = runner(repo, tracker)
    result = r.poll_once()  # two lost, then a claim that holds
    assert result.tracker_error is None and len(result.submitted) == 1 and tracker.claim_calls >= 3

    stubborn = ScriptedTracker(repo, [ClaimConflict("lost")] * 50)
    r = runner(repo, stubborn)
    result = r.poll_once()
    assert stubborn.claim_calls == 5 and result.submitted == [] and result.tracker_error is None


def test_once_gives_up_with_an_error_when_the_tracker_never_answers(repo):
    tracker = ScriptedTracker(repo, [TrackerBusy("database is locked")] * 50)
    r = runner(repo, tracker)
    assert r.run(once=True, poll_interval=0.01, watch_interval=0.01) == 1
    assert r.tracker_failed == "database is locked"
    assert tracker.claim_calls == Runner.ONCE_TRACKER_TRIES


def test_once_rides_out_a_tracker_that_fails_then_answers(repo):
    tracker = ScriptedTracker(repo, [TrackerBusy("database is locked")] * (Runner.ONCE_TRACKER_TRIES - 1))
    tracker.create("Ready", id="t-1")
    r = runner(repo, tracker)
    assert r.run(once=True, poll_interval=0.01, watch_interval=0.01) == 0
    assert r.tracker_failed is None and tracker.show("t-1").status == "closed"


def test_a_run_the_engine_refuses_gives_its_claim_back(repo, monkeypatch):
    tracker = ScriptedTracker(repo)
    tracker.create("Ready", id="t-1")
    r = runner(repo, tracker)

    def refuse(inp):
        raise RunnerError("the run state is damaged", fix="move it away")

    monkeypatch.setattr(r.engine, "submit", refuse)
    with pytest.raises(RunnerError, match="damaged"):
        r.poll_once()
    issue = tracker.show("t-1")
    assert issue.status == "open" and not issue.assignee  # released, not left in progress


def test_stale_claims_cannot_be_listed_the_runner_starts_anyway(repo):
    tracker = ScriptedTracker(repo, claimed_error=TrackerBusy("database is locked"))
    tracker.create("Left behind", id="t-stale")
    JsonlTracker(repo).claim("t-stale")
    r = runner(repo, tracker)
    assert r.take_back_stale_claims() == []
    tracker.claimed_error = None
    [run_id] = r.take_back_stale_claims()
    assert r.engine.get_run(run_id).key == "t-stale"


# --- engine.prefetch ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_a_pass_claims_max_sessions_plus_prefetch_issues(repo, prefetch):
    config = repo / ".beads-runner.toml"
    config.write_text(config.read_text().replace("prefetch = 1", f"prefetch = {prefetch}"))
    tracker = ScriptedTracker(repo)
    for i in range(8):
        tracker.create(f"Issue {i}", id=f"t-{i}")
    r = runner(repo, tracker)  # never started: the runs stay queued, each waiting for a session
    assert r.free_sessions() == 2 + prefetch
    result = r.poll_once()
    assert len(result.submitted) == 2 + prefetch
    assert len(tracker.claimed()) == 2 + prefetch
    assert r.free_sessions() == 0
    assert r.poll_once().submitted == []  # nothing more until a session is taken or freed


# --- the .beads/ change watcher -------------------------------------------------------------------------
def _stamp(path: Path, ns: int) -> int:
    os.utime(path, ns=(ns, ns))
    return ns


def test_the_watcher_sees_writes_new_and_removed_entries_and_nested_stores(tmp_path):
    beads = tmp_path / ".beads"
    (beads / "dolt" / "db").mkdir(parents=True)
    store = beads / "issues.jsonl"
    store.write_text("")
    deep = beads / "dolt" / "db" / "chunk"
    deep.write_text("")
    base = 1_700_000_000 * 10**9
    for p in (store, deep, beads / "dolt" / "db", beads / "dolt"):
        _stamp(p, base)
    watcher = ChangeWatcher(beads)
    assert not watcher.changed()  # nothing happened
    _stamp(store, base + 10**9)
    assert watcher.changed() and not watcher.changed()  # once per change
    _stamp(deep, base + 2 * 10**9)  # inside a store directory (bd's Dolt database), two levels down
    assert watcher.changed()
    (beads / "new").write_text("")
    _stamp(beads / "new", base)  # an older time than the newest: the entry count tells
    assert watcher.changed()
    (beads / "new").unlink()
    assert watcher.changed()


def test_the_watcher_ignores_the_runners_own_writes_but_not_anyone_elses(tmp_path):
    """The real bd touches its store even when it only reads: a runner woken by its own calls would
    poll without end. A change counts only if some new mtime is not the runner's own."""
    beads = tmp_path / ".beads"
    beads.mkdir()
    store = beads / "store"
    store.write_text("0")
    base = 1_700_000_000 * 10**9
    _stamp(store, base)
    watcher = ChangeWatcher(beads)
    mine = _stamp(store, base + 10**9)  # the runner's own call
    assert not watcher.changed(ours=lambda mtime: mtime == mine)
    _stamp(store, base + 2 * 10**9)  # someone else's write
    assert watcher.changed(ours=lambda mtime: mtime == mine)
    (beads / "new-file").write_text("")  # an entry appeared: always a change
    assert watcher.changed(ours=lambda mtime: True)


def test_a_change_under_beads_wakes_the_runner_between_polls(repo):
    """The poll interval is an hour: only the watcher can make the runner see an issue filed after
    its first poll."""
    tracker = JsonlTracker(repo)
    r = runner(repo, tracker)
    polls, first = [], threading.Event()
    real = r.poll_once

    def counted():
        result = real()
        polls.append(result)
        first.set()
        return result

    r.poll_once = counted
    thread = threading.Thread(target=r.run, kwargs={"poll_interval": 3600, "watch_interval": 0.05}, daemon=True)
    thread.start()
    try:
        assert first.wait(60)
        JsonlTracker(repo, actor="alice").create("Filed later", id="t-late")  # another process's write
        deadline = time.monotonic() + 120
        while tracker.show("t-late").status != "closed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tracker.show("t-late").status == "closed"
        assert len(polls) >= 2
    finally:
        r.request_stop()
        thread.join(60)
    assert not thread.is_alive()
