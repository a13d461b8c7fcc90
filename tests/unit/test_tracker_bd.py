"""BdTracker against the bd stand-in (tests/fakes/bd), run as real subprocesses."""

from __future__ import annotations

import fcntl
import json
import threading
import time
from pathlib import Path

import pytest

from beads_runner.errors import ClaimConflict, IssueNotFound, TrackerBusy, TrackerError, TrackerUnavailable
from beads_runner.tracker import make_tracker
from beads_runner.tracker.base import NEEDS_HUMAN_LABEL, Tracker
from beads_runner.tracker.bd import BdTracker
from beads_runner.tracker.parse import CloseBlocked
from tests.fakes.bd_standin import (
    bd_json,
    create_issue,
    logged_calls,
    make_beads_repo,
    put_bd_on_path,
    run_bd,
    write_faults,
)

ACTOR = "runner"


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bd-calls.log"
    put_bd_on_path(monkeypatch)
    for name in ("BD_STANDIN_VERSION", "BD_STANDIN_FAULTS", "BD_STANDIN_LOCK", "BD_ACTOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BD_STANDIN_LOG", str(path))
    return path


@pytest.fixture
def repo(tmp_path: Path, log: Path) -> Path:
    return make_beads_repo(tmp_path / "repo")


@pytest.fixture
def tracker(repo: Path) -> BdTracker:
    return BdTracker(repo, actor=ACTOR, timeout=20, busy_backoff=0.01)


@pytest.fixture
def faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "faults.json"
    monkeypatch.setenv("BD_STANDIN_FAULTS", str(path))

    def inject(*items: dict) -> Path:
        return write_faults(path, *items)

    return inject


def test_is_a_tracker_and_make_tracker_builds_it(repo: Path):
    from beads_runner.config import TrackerConfig

    built = make_tracker(TrackerConfig(kind="bd", command="bd", actor="x", timeout=5), repo)
    assert isinstance(built, BdTracker) and isinstance(built, Tracker)
    assert (built.actor, built.timeout, built.repo) == ("x", 5, repo)


def test_version(tracker: BdTracker, monkeypatch: pytest.MonkeyPatch):
    assert tracker.version() == "1.0.5"
    monkeypatch.setenv("BD_STANDIN_VERSION", "0.62.1")
    assert BdTracker(tracker.repo, actor=ACTOR).version() == "0.62.1"


def test_ready_excludes_epics_infrastructure_and_blocked(repo: Path, tracker: BdTracker, log: Path):
    a = create_issue(repo, "first", "-p", "1")
    blocked = create_issue(repo, "blocked by first", "--deps", a)
    epic = create_issue(repo, "an epic", "-t", "epic", "-p", "0")
    gate = create_issue(repo, "a gate", "-t", "gate", "-p", "0")
    related = create_issue(repo, "only related", "--deps", f"related:{a}", "-p", "3")
    ids = [i.id for i in tracker.ready()]
    assert ids == [a, related]
    assert blocked not in ids and epic not in ids and gate not in ids
    ready_calls = [c for c in logged_calls(log) if c[:1] == ["ready"]]
    assert ready_calls and all(c[c.index("--exclude-type") + 1] == "epic" for c in ready_calls)


def test_ready_on_old_bd_filters_epics_client_side(repo: Path, log: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BD_STANDIN_VERSION", "0.62.0")  # --exclude-type is an unknown flag there
    task = create_issue(repo, "task")
    create_issue(repo, "epic", "-t", "epic")
    assert [i.id for i in BdTracker(repo, actor=ACTOR).ready()] == [task]
    assert not any("--exclude-type" in c for c in logged_calls(log))


def test_ready_limit_and_empty(repo: Path, tracker: BdTracker, log: Path):
    assert tracker.ready() == []
    for n in range(3):
        create_issue(repo, f"t{n}")
    assert len(tracker.ready(limit=2)) == 2
    assert ["--limit", "2"] == [c for c in logged_calls(log) if c[:1] == ["ready"]][-1][1:3]


def test_show_resolves_blocker_statuses(repo: Path, tracker: BdTracker):
    a = create_issue(repo, "a")
    b = create_issue(repo, "b", "--deps", a)
    run_bd(repo, "update", a, "--claim", actor="alice")
    issue = tracker.show(b)
    assert [(x.id, x.type, x.status) for x in issue.blockers] == [(a, "blocks", "in_progress")]
    assert [x.id for x in issue.open_blockers] == [a]
    with pytest.raises(IssueNotFound, match="no issues found matching"):
        tracker.show("tt-nope")


def test_claim_and_read_back(repo: Path, tracker: BdTracker):
    a = create_issue(repo, "a")
    issue = tracker.claim(a)
    assert (issue.status, issue.assignee) == ("in_progress", ACTOR)
    assert tracker.claim(a).assignee == ACTOR  # already ours: fine


def test_claim_conflict_when_someone_else_holds_it(repo: Path, tracker: BdTracker):
    a = create_issue(repo, "a")
    run_bd(repo, "update", a, "--claim", actor="alice")
    with pytest.raises(ClaimConflict) as info:
        tracker.claim(a)
    assert "alice" in str(info.value) and f"bd update {a} --claim" in str(info.value)


def test_claim_read_back_catches_a_silent_double_win(repo: Path, tracker: BdTracker, faults):
    a = create_issue(repo, "a")
    faults({"command": "update", "kind": "skip"})  # bd said yes, but the write did not happen
    with pytest.raises(ClaimConflict, match="reading it back"):
        tracker.claim(a)


def test_claim_next_uses_ready_claim(repo: Path, tracker: BdTracker, log: Path):
    create_issue(repo, "low", "-p", "3")
    high = create_issue(repo, "high", "-p", "1")
    create_issue(repo, "epic", "-t", "epic", "-p", "0")
    issue = tracker.claim_next()
    assert issue is not None and issue.id == high and issue.assignee == ACTOR
    claim_calls = [c for c in logged_calls(log) if c[:2] == ["ready", "--claim"]]
    assert claim_calls and "--exclude-type" in claim_calls[0]
    assert not any(c[:1] == ["update"] for c in logged_calls(log))


def test_claim_next_on_bd_without_ready_claim(repo: Path, log: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BD_STANDIN_VERSION", "1.0.3")
    first = create_issue(repo, "first", "-p", "1")
    second = create_issue(repo, "second", "-p", "2")
    run_bd(repo, "update", first, "--assignee", "alice")  # open but someone else's: skipped
    tracker = BdTracker(repo, actor=ACTOR, busy_backoff=0.01)
    issue = tracker.claim_next()
    assert issue is not None and issue.id == second and issue.status == "in_progress"
    calls = logged_calls(log)
    assert not any(c[:1] == ["ready"] and "--claim" in c for c in calls)
    assert any(c[:3] == ["update", second, "--claim"] for c in calls)
    assert tracker.claim_next() is None


def test_claim_next_returns_none_when_nothing_is_ready(repo: Path, tracker: BdTracker):
    create_issue(repo, "epic", "-t", "epic")
    assert tracker.claim_next() is None


def test_release(repo: Path, tracker: BdTracker):
    a = create_issue(repo, "a")
    tracker.claim(a)
    assert tracker.ready() == []
    tracker.release(a)
    issue = tracker.show(a)
    assert (issue.status, issue.assignee) == ("open", "")
    assert [i.id for i in tracker.ready()] == [a]


def test_close_is_idempotent(repo: Path, tracker: BdTracker):
    a = create_issue(repo, "a")
    closed = tracker.close(a, "done: all gates green")
    assert (closed.status, closed.close_reason) == ("closed", "done: all gates green")
    again = tracker.close(a, "second time")
    assert again.status == "closed" and again.close_reason == "done: all gates green"


def test_close_of_an_issue_closed_meanwhile_succeeds_with_the_first_reason(repo: Path, tracker: BdTracker, faults,
                                                                           log: Path):
    a = create_issue(repo, "a")
    run_bd(repo, "close", a, "--reason", "by hand")
    # the tracker's read before the close still saw it open; then bd refuses the close
    faults({"command": "show", "kind": "skip", "stdout": json.dumps([{"id": a, "title": "a", "status": "open"}])},
           {"command": "close", "kind": "error_json_stderr", "message": f"issue {a} is already closed"})
    closed = tracker.close(a, "again")
    assert (closed.status, closed.close_reason) == ("closed", "by hand")
    assert [c[0] for c in logged_calls(log)][-3:] == ["show", "close", "show"]


def test_close_of_a_closed_issue_does_not_call_bd_close(repo: Path, tracker: BdTracker, log: Path):
    a = create_issue(repo, "a")
    run_bd(repo, "close", a, "--reason", "by hand")
    assert tracker.close(a, "Landed 0123abcd on main").close_reason == "by hand"
    assert [c for c in logged_calls(log) if c[0] == "close"] == [["close", a, "--reason", "by hand"]]


def test_close_error_on_open_issue_surfaces(repo: Path, tracker: BdTracker, faults):
    a = create_issue(repo, "a")
    faults({"command": "close", "kind": "exit1_text", "message": "storage exploded"})
    with pytest.raises(TrackerError, match="storage exploded"):
        tracker.close(a, "x")


def test_close_refused_with_open_blockers(repo: Path, tracker: BdTracker):
    a = create_issue(repo, "a")
    b = create_issue(repo, "b", "--deps", a)
    with pytest.raises(CloseBlocked) as info:
        tracker.close(b, "done")
    assert f"blocked by open issues [{a}]" in str(info.value) and f"bd close {b}" in str(info.value)
    assert tracker.show(b).status == "open"


def test_comments_round_trip_with_flag_like_text(repo: Path, tracker: BdTracker):
    a = create_issue(repo, "a")
    text = "--status closed\nsecond line with 'quotes' and $HOME"
    tracker.comment(a, text)
    tracker.comment(a, "-x")
    comments = tracker.comments(a)
    assert [c["text"] for c in comments] == [text, "-x"]
    assert all(c["author"] == ACTOR and c["issue_id"] == a and c["id"] and c["created_at"] for c in comments)
    assert tracker.show(a).status == "open"  # the text was not read as a flag


def test_hand_to_human(repo: Path, tracker: BdTracker):
    a = create_issue(repo, "a")
    tracker.claim(a)
    tracker.hand_to_human(a)
    issue = tracker.show(a)
    assert issue.status == "blocked" and NEEDS_HUMAN_LABEL in issue.labels
    assert tracker.ready() == []


def test_lock_fault_is_retried(repo: Path, tracker: BdTracker, faults, log: Path, tmp_path: Path):
    a = create_issue(repo, "a")
    faults({"command": "update", "kind": "lock", "times": 2})
    assert tracker.claim(a).assignee == ACTOR
    assert len([c for c in logged_calls(log) if c[:1] == ["update"]]) == 3
    assert json.loads((tmp_path / "faults.json").read_text()) == []  # consumed


def test_persistent_lock_surfaces_as_busy(repo: Path, tracker: BdTracker, faults):
    a = create_issue(repo, "a")
    faults({"command": "update", "kind": "lock", "times": 50})
    with pytest.raises(TrackerBusy) as info:
        tracker.claim(a)
    assert info.value.retryable and "database is locked" in str(info.value)
    assert f"bd update {a} --claim" in str(info.value) and "(after 4 calls)" in str(info.value)


def test_garbage_surfaces_as_busy_with_the_text(repo: Path, tracker: BdTracker, faults):
    create_issue(repo, "a")
    faults({"command": "ready", "kind": "garbage", "times": 50})
    with pytest.raises(TrackerBusy) as info:
        tracker.ready()
    assert "not JSON" in str(info.value) and "panic" in str(info.value) and "bd ready" in str(info.value)


def test_garbage_once_is_retried(repo: Path, tracker: BdTracker, faults):
    a = create_issue(repo, "a")
    faults({"command": "show", "kind": "garbage"})
    assert tracker.show(a).id == a


@pytest.mark.parametrize("kind", ["error_json_stderr", "error_json_stdout", "exit1_text"])
def test_error_shapes_surface_with_bd_text(repo: Path, tracker: BdTracker, faults, kind: str):
    a = create_issue(repo, "a")
    faults({"command": "show", "kind": kind, "message": "validation failed: weird"})
    with pytest.raises(TrackerError) as info:
        tracker.show(a)
    assert not info.value.retryable
    assert "validation failed: weird" in str(info.value) and f"bd show {a}" in str(info.value)


def test_timeout_is_busy(repo: Path, faults):
    a = create_issue(repo, "a")
    faults({"command": "show", "kind": "sleep", "seconds": 5})
    with pytest.raises(TrackerBusy, match="did not finish within"):
        BdTracker(repo, actor=ACTOR, timeout=0.5).show(a)


def test_a_timeout_without_lock_words_is_not_retried(repo: Path, faults, log: Path):
    a = create_issue(repo, "a")
    faults({"command": "comments add", "kind": "sleep", "seconds": 30})
    with pytest.raises(TrackerBusy) as caught:
        BdTracker(repo, actor=ACTOR, timeout=0.5, busy_attempts=3, busy_backoff=0.01).comment(a, "maybe written")
    assert getattr(caught.value, "timed_out", False)
    assert len([c for c in logged_calls(log) if c[:2] == ["comments", "add"]]) == 1  # might have written: once


def test_a_store_held_past_the_timeout_is_retried_and_written_once(repo: Path, log: Path):
    """The stand-in waits for its store like the real bd; stopped at the timeout it says it was
    waiting for the lock, so the tracker retries, and the write lands exactly once."""
    a = create_issue(repo, "a")
    holder_done = threading.Event()

    def hold_until_the_second_attempt() -> None:
        with open(repo / ".beads" / "issues.jsonl.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            while len([c for c in logged_calls(log) if c[:2] == ["comments", "add"]]) < 2:
                time.sleep(0.02)
        holder_done.set()

    holder = threading.Thread(target=hold_until_the_second_attempt)
    holder.start()
    BdTracker(repo, actor=ACTOR, timeout=1, busy_attempts=6, busy_backoff=0.01).comment(a, "written once")
    holder.join()
    assert holder_done.is_set()
    assert [c["text"] for c in bd_json(repo, "comments", a)] == ["written once"]


def test_missing_executable_is_unavailable_with_a_fix(repo: Path):
    for command in ("bd-not-installed-here", str(repo / "no" / "bd")):
        with pytest.raises(TrackerUnavailable) as info:
            BdTracker(repo, command=command, actor=ACTOR).ready()
        assert command.split("/")[-1] in str(info.value)
        assert "tracker.command" in info.value.fix and "install" in info.value.fix


def test_no_database_is_unavailable(tmp_path: Path, log: Path):
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(TrackerUnavailable) as info:
        BdTracker(bare, actor=ACTOR).ready()
    assert "bd init" in info.value.fix and "no beads database found" in str(info.value)


def test_envelope_output(repo: Path, monkeypatch: pytest.MonkeyPatch):
    a = create_issue(repo, "a")
    monkeypatch.setenv("BD_JSON_ENVELOPE", "1")
    assert '"data"' in run_bd(repo, "ready", "--json").stdout  # the stand-in really wraps
    tracker = BdTracker(repo, actor=ACTOR)
    assert [i.id for i in tracker.ready()] == [a]
    assert tracker.claim(a).assignee == ACTOR
    tracker.comment(a, "hi")
    assert [c["text"] for c in tracker.comments(a)] == ["hi"]


def test_every_call_carries_json_and_actor(repo: Path, tracker: BdTracker, log: Path):
    a = create_issue(repo, "a")
    b = create_issue(repo, "b")
    log.unlink()
    tracker.ready()
    tracker.claim(a)
    tracker.comment(a, "note")
    tracker.comments(a)
    tracker.close(a, "done")
    tracker.claim_next()
    tracker.release(b)
    tracker.hand_to_human(b)
    calls = logged_calls(log)
    assert len(calls) >= 9
    legacy = {"--no-daemon", "--no-auto-flush", "--no-auto-import", "--no-db"}
    for call in calls:
        assert "--json" in call and call[call.index("--actor") + 1] == ACTOR, call
        assert not legacy & set(call), call


def test_concurrent_claims_are_serialised_and_one_wins(repo: Path, monkeypatch: pytest.MonkeyPatch):
    a = create_issue(repo, "contested")
    # The stand-in now fails at once, like real bd, when another call holds the store; with no
    # retries allowed, any overlap between the threads' bd calls would surface as TrackerBusy.
    monkeypatch.setenv("BD_STANDIN_LOCK", "fail")
    monkeypatch.setenv("BD_STANDIN_HOLD", "0.15")
    results: list[object] = []

    def worker(n: int) -> None:
        tracker = BdTracker(repo, actor=f"agent-{n}", busy_attempts=1)
        try:
            results.append(tracker.claim(a))
        except TrackerError as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1, results
    assert all(isinstance(r, ClaimConflict) for r in results if isinstance(r, Exception)), results
    assert bd_json(repo, "show", a)[0]["assignee"] == winners[0].assignee  # type: ignore[union-attr]
    assert (repo / ".beads-runner" / "bd.lock").exists()


def test_ids_that_look_like_flags_are_refused(tracker: BdTracker):
    with pytest.raises(IssueNotFound, match="looks like a flag"):
        tracker.show("--all")


def _claim_in_process(args: tuple[str, str, str]) -> str:
    repo, actor, issue_id = args
    try:
        return BdTracker(Path(repo), actor=actor, busy_attempts=1).claim(issue_id).assignee
    except ClaimConflict:
        return ""
    except TrackerError as exc:  # TrackerBusy here would mean two bd calls overlapped
        return f"error: {exc}"


def test_concurrent_claims_across_processes_are_serialised(repo: Path, monkeypatch: pytest.MonkeyPatch):
    import multiprocessing

    a = create_issue(repo, "contested")
    monkeypatch.setenv("BD_STANDIN_LOCK", "fail")
    monkeypatch.setenv("BD_STANDIN_HOLD", "0.15")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_claim_in_process, [(str(repo), f"agent-{n}", a) for n in range(4)])
    assert not [r for r in results if r.startswith("error")], results
    assert len([r for r in results if r]) == 1, results


def test_standin_runs_through_its_own_shebang(repo: Path):
    import subprocess

    from tests.fakes.bd_standin import standin_path

    proc = subprocess.run([str(standin_path()), "version", "--json"], cwd=repo, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0 and json.loads(proc.stdout)["version"]
    proc = subprocess.run([str(standin_path()), "ready", "--no-daemon", "--json"], cwd=repo, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 1 and "unknown flag: --no-daemon" in proc.stderr


def test_the_claims_read_back_answers_the_next_show_once(repo: Path, tracker: BdTracker, log: Path):
    """check-deps reads the issue right after the daemon claimed it: the claim's read-back, a few ms
    old, answers that read (one bd call less per issue); the read after it goes to bd again."""
    a = create_issue(repo, "a")
    claimed = tracker.claim_next()
    shows = lambda: [c for c in logged_calls(log) if c[0] == "show"]  # noqa: E731
    assert len(shows()) == 1  # the read-back

    assert tracker.show(a) == claimed
    assert len(shows()) == 1
    assert tracker.show(a).id == a
    assert len(shows()) == 2


def test_a_write_forgets_the_claims_read_back(repo: Path, tracker: BdTracker, log: Path):
    a = create_issue(repo, "a")
    tracker.claim(a)
    tracker.comment(a, "a write in between")
    tracker.show(a)
    assert len([c for c in logged_calls(log) if c[0] == "show"]) == 2
