"""JsonlTracker: the contract's ready rules, atomic claims across processes, lossless round trips."""

from __future__ import annotations

import json
import multiprocessing
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beads_runner.config import TrackerConfig
from beads_runner.errors import ClaimConflict, IssueNotFound, TrackerError, TrackerUnavailable
from beads_runner.tracker import make_tracker
from beads_runner.tracker.base import INFRASTRUCTURE_TYPES, NEEDS_HUMAN_LABEL, Tracker
from beads_runner.tracker.jsonl import JsonlTracker
from beads_runner.tracker.parse import CloseBlocked
from tests.fakes.bd_standin import bd_json, make_beads_repo, put_bd_on_path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "beads"
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
T0 = "2026-01-01T00:00:00Z"


def issue(id: str, **fields) -> dict:  # noqa: A002
    base = {"_type": "issue", "id": id, "title": id, "status": "open", "priority": 2, "issue_type": "task",
            "created_at": T0, "updated_at": T0}
    base.update(fields)
    return base


def dep(issue_id: str, target: str, type: str = "blocks") -> dict:  # noqa: A002
    return {"issue_id": issue_id, "depends_on_id": target, "type": type, "created_at": T0, "created_by": "x",
            "metadata": "{}"}


def write(repo: Path, *issues: dict, raw_lines: list[str] | None = None) -> Path:
    path = repo / ".beads" / "issues.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(i) for i in issues] + list(raw_lines or [])
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def ready_ids(repo: Path) -> list[str]:
    return [i.id for i in JsonlTracker(repo).ready()]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "repo").mkdir()
    return tmp_path / "repo"


def test_is_a_tracker_and_make_tracker_builds_it(repo: Path):
    built = make_tracker(TrackerConfig(kind="jsonl", path="x/i.jsonl", actor="me"), repo)
    assert isinstance(built, JsonlTracker) and isinstance(built, Tracker)
    assert built.path == repo / "x" / "i.jsonl" and built.actor == "me"


def test_missing_file_is_unavailable_with_a_fix(repo: Path):
    with pytest.raises(TrackerUnavailable) as info:
        JsonlTracker(repo).ready()
    assert "issues.jsonl" in str(info.value) and "bd export" in info.value.fix
    (repo / ".beads").mkdir()
    with pytest.raises(TrackerUnavailable):
        JsonlTracker(repo).show("x-1")


# -- ready rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["in_progress", "blocked", "deferred", "closed", "pinned", "hooked", "review"])
def test_only_status_open_is_ready(repo: Path, status: str):
    write(repo, issue("t-ok"), issue("t-no", status=status))
    assert ready_ids(repo) == ["t-ok"]


def test_pinned_and_ephemeral_are_not_ready(repo: Path):
    write(repo, issue("t-ok", pinned=0, ephemeral=False), issue("t-pin", pinned=True),
          issue("t-eph", ephemeral=True), issue("t-eph1", ephemeral=1))
    assert ready_ids(repo) == ["t-ok"]


def test_deferred_into_the_future_is_not_ready(repo: Path):
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    write(repo, issue("t-past", defer_until="2020-01-01T00:00:00Z"), issue("t-future", defer_until=future),
          issue("t-null", defer_until=None))
    assert sorted(ready_ids(repo)) == ["t-null", "t-past"]


@pytest.mark.parametrize("issue_type", sorted(INFRASTRUCTURE_TYPES | {"epic"}))
def test_infrastructure_types_and_epics_are_not_ready(repo: Path, issue_type: str):
    write(repo, issue("t-ok", issue_type="bug"), issue("t-no", issue_type=issue_type))
    assert ready_ids(repo) == ["t-ok"]


@pytest.mark.parametrize("blocker_status,ready", [("open", False), ("in_progress", False), ("blocked", False),
                                                  ("deferred", False), ("closed", True)])
@pytest.mark.parametrize("dep_type", ["blocks", "conditional-blocks"])
def test_blocking_dependencies(repo: Path, blocker_status: str, ready: bool, dep_type: str):
    write(repo, issue("t-b", status=blocker_status, issue_type="chore"),
          issue("t-a", dependencies=[dep("t-a", "t-b", dep_type)]))
    assert ("t-a" in ready_ids(repo)) is ready


@pytest.mark.parametrize("dep_type", ["related", "discovered-from", "parent-child", "duplicates"])
def test_other_dependency_types_never_block(repo: Path, dep_type: str):
    write(repo, issue("t-b", issue_type="epic"), issue("t-a", dependencies=[dep("t-a", "t-b", dep_type)]))
    assert ready_ids(repo) == ["t-a"]


def test_dangling_blocker_does_not_block(repo: Path):
    write(repo, issue("t-a", dependencies=[dep("t-a", "t-gone")]))
    assert ready_ids(repo) == ["t-a"]


def test_blocked_parent_blocks_its_children(repo: Path):
    write(repo,
          issue("t-x"),
          issue("t-epic", issue_type="epic", dependencies=[dep("t-epic", "t-x")]),
          issue("t-child", parent="t-epic"),  # the `parent` field
          issue("t-child2", dependencies=[dep("t-child2", "t-epic", "parent-child")]),  # the dependency
          issue("t-grandchild", parent="t-child"))
    assert ready_ids(repo) == ["t-x"]


def test_unblocked_parent_does_not_block(repo: Path):
    write(repo, issue("t-epic", issue_type="epic"),
          issue("t-child", parent="t-epic", created_at="2026-01-02T00:00:00Z"))
    assert ready_ids(repo) == ["t-child"]


def test_waits_for_target_with_open_children(repo: Path):
    write(repo,
          issue("t-spawner", issue_type="epic"),
          issue("t-kid1", parent="t-spawner", status="closed"),
          issue("t-kid2", parent="t-spawner", status="in_progress"),
          issue("t-waiter", dependencies=[dep("t-waiter", "t-spawner", "waits-for")]))
    assert "t-waiter" not in ready_ids(repo)
    write(repo,
          issue("t-spawner", issue_type="epic"),
          issue("t-kid1", parent="t-spawner", status="closed"),
          issue("t-waiter", dependencies=[dep("t-waiter", "t-spawner", "waits-for")]))
    assert ready_ids(repo) == ["t-waiter"]


def test_order_is_priority_then_newest(repo: Path):
    write(repo,
          issue("t-p2-old", priority=2, created_at="2026-01-01T00:00:00Z"),
          issue("t-p2-new", priority=2, created_at="2026-01-03T00:00:00Z"),
          issue("t-p0", priority=0, created_at="2025-01-01T00:00:00Z"),
          issue("t-p1-str", priority="1", created_at="2026-01-02T00:00:00Z"))
    assert ready_ids(repo) == ["t-p0", "t-p1-str", "t-p2-new", "t-p2-old"]
    assert [i.id for i in JsonlTracker(repo).ready(limit=2)] == ["t-p0", "t-p1-str"]


def test_ready_rules_agree_with_the_bd_standin(repo: Path, monkeypatch: pytest.MonkeyPatch):
    """Two independent implementations of the contract's rules, one file: same answer."""
    put_bd_on_path(monkeypatch)
    make_beads_repo(repo)
    future = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    write(repo,
          issue("t-1", priority=1), issue("t-2", created_at="2026-02-01T00:00:00Z"), issue("t-3", status="closed"),
          issue("t-4", dependencies=[dep("t-4", "t-1")]), issue("t-5", dependencies=[dep("t-5", "t-3")]),
          issue("t-6", issue_type="gate"), issue("t-7", defer_until=future), issue("t-8", ephemeral=True),
          issue("t-9", issue_type="epic", dependencies=[dep("t-9", "t-2")]), issue("t-10", parent="t-9"),
          issue("t-11", dependencies=[dep("t-11", "t-9", "waits-for")]), issue("t-12", priority=0, pinned=True),
          issue("t-13", dependencies=[dep("t-13", "t-1", "related")], priority=4))
    standin = [i["id"] for i in bd_json(repo, "ready", "--exclude-type", "epic", "--limit", "0")]
    assert ready_ids(repo) == standin == ["t-1", "t-2", "t-5", "t-13"]


# -- claims -----------------------------------------------------------------------------------------


def test_claim_sets_status_assignee_started_at(repo: Path):
    write(repo, issue("t-a"))
    got = JsonlTracker(repo, actor="me").claim("t-a")
    assert (got.status, got.assignee) == ("in_progress", "me")
    raw = json.loads((repo / ".beads" / "issues.jsonl").read_text())
    assert RFC3339_Z.match(raw["started_at"]) and raw["updated_at"] != T0
    assert JsonlTracker(repo, actor="me").claim("t-a").assignee == "me"  # ours already: fine


def test_claim_refuses_someone_elses_and_closed(repo: Path):
    write(repo, issue("t-a", assignee="alice"), issue("t-b", status="closed"), issue("t-c", status="in_progress"))
    tracker = JsonlTracker(repo, actor="me")
    with pytest.raises(ClaimConflict, match="already claimed by alice"):
        tracker.claim("t-a")
    with pytest.raises(ClaimConflict, match="closed"):
        tracker.claim("t-b")
    with pytest.raises(ClaimConflict, match="in_progress"):
        tracker.claim("t-c")
    with pytest.raises(IssueNotFound):
        tracker.claim("t-zzz")


def test_claimed_lists_only_this_actors_issues_in_progress(repo: Path):
    """What the runner takes back at start: in progress under its actor, nothing else."""
    write(repo, issue("t-mine", status="in_progress", assignee="me"),
          issue("t-alice", status="in_progress", assignee="alice"),
          issue("t-unowned", status="in_progress"),
          issue("t-done", status="closed", assignee="me"),
          issue("t-handed", status="blocked", assignee="me", labels=["needs-human"]),
          issue("t-assigned", assignee="me"),  # assigned to us but never started
          issue("t-open"))
    tracker = JsonlTracker(repo, actor="me")
    assert [i.id for i in tracker.claimed()] == ["t-mine"]
    assert [i.id for i in JsonlTracker(repo, actor="alice").claimed()] == ["t-alice"]
    tracker.claim("t-open")
    assert sorted(i.id for i in tracker.claimed()) == ["t-mine", "t-open"]
    tracker.release("t-mine")
    tracker.close("t-open", "done")
    assert tracker.claimed() == []


def _claim_one(args: tuple[str, str, str]) -> str:
    repo, actor, issue_id = args
    try:
        return JsonlTracker(Path(repo), actor=actor).claim(issue_id).assignee
    except ClaimConflict:
        return ""


def _claim_next(args: tuple[str, str]) -> str:
    repo, actor = args
    got = JsonlTracker(Path(repo), actor=actor).claim_next()
    return got.id if got else ""


def test_concurrent_claims_across_processes_one_winner(repo: Path):
    write(repo, issue("t-a"))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(12) as pool:
        results = pool.map(_claim_one, [(str(repo), f"agent-{n}", "t-a") for n in range(24)])
    winners = [r for r in results if r]
    assert len(winners) == 1, results
    assert JsonlTracker(repo).show("t-a").assignee == winners[0]


def test_concurrent_claim_next_never_hands_out_an_issue_twice(repo: Path):
    write(repo, *[issue(f"t-{n}") for n in range(5)])
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        results = pool.map(_claim_next, [(str(repo), f"agent-{n}") for n in range(16)])
    claimed = [r for r in results if r]
    assert sorted(claimed) == [f"t-{n}" for n in range(5)]
    assert JsonlTracker(repo).claim_next() is None


def test_release(repo: Path):
    write(repo, issue("t-a"))
    tracker = JsonlTracker(repo, actor="me")
    tracker.claim("t-a")
    assert tracker.ready() == []
    tracker.release("t-a")
    got = tracker.show("t-a")
    assert (got.status, got.assignee) == ("open", "")
    assert ready_ids(repo) == ["t-a"]


# -- writes and round trips -------------------------------------------------------------------------


def test_close_comment_hand_to_human_preserve_other_lines_and_unknown_fields(repo: Path):
    other = json.dumps(issue("t-other"), indent=None, separators=(", ", ": "))  # spacing must survive
    target = issue("t-a", work_type="mutex", owner="o@x", metadata={"k": [1]}, labels=["zeta", "alpha"],
                   comment_count=0)
    path = write(repo, target, raw_lines=[other, '{"_type":"memory","key":"x","value":"y"}'])
    tracker = JsonlTracker(repo, actor="me")
    tracker.comment("t-a", "first")
    tracker.comment("t-a", "--second")
    tracker.hand_to_human("t-a")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[1] == other and lines[2] == '{"_type":"memory","key":"x","value":"y"}'
    raw = json.loads(lines[0])
    assert list(raw)[:2] == ["_type", "id"] and raw["_type"] == "issue"
    assert raw["work_type"] == "mutex" and raw["owner"] == "o@x" and raw["metadata"] == {"k": [1]}
    assert raw["labels"] == ["alpha", NEEDS_HUMAN_LABEL, "zeta"] and raw["status"] == "blocked"
    assert raw["comment_count"] == 2 and RFC3339_Z.match(raw["updated_at"]) and raw["updated_at"] != T0
    assert [set(c) for c in raw["comments"]] == [{"id", "issue_id", "author", "text", "created_at"}] * 2
    comments = tracker.comments("t-a")
    assert [(c["text"], c["author"], c["issue_id"]) for c in comments] == [("first", "me", "t-a"),
                                                                           ("--second", "me", "t-a")]
    assert "t-a" not in ready_ids(repo)
    assert not list(path.parent.glob("*.tmp"))  # the atomic write cleaned up


def test_close_sets_fields_and_is_idempotent(repo: Path):
    write(repo, issue("t-a"))
    tracker = JsonlTracker(repo)
    got = tracker.close("t-a", "done")
    assert (got.status, got.close_reason) == ("closed", "done")
    raw = json.loads((repo / ".beads" / "issues.jsonl").read_text())
    assert RFC3339_Z.match(raw["closed_at"]) and raw["close_reason"] == "done"
    assert tracker.close("t-a", "again").close_reason == "done"


def test_close_refuses_with_open_blockers_and_open_children(repo: Path):
    write(repo, issue("t-b"), issue("t-a", dependencies=[dep("t-a", "t-b")]),
          issue("t-epic", issue_type="epic"), issue("t-kid", parent="t-epic"))
    tracker = JsonlTracker(repo)
    with pytest.raises(CloseBlocked, match=r"blocked by open issues \[t-b\]"):
        tracker.close("t-a", "done")
    with pytest.raises(CloseBlocked, match="t-kid"):
        tracker.close("t-epic", "done")
    assert tracker.show("t-a").status == "open"
    tracker.close("t-b", "done")
    assert tracker.close("t-a", "done").status == "closed"


def test_show_resolves_blockers(repo: Path):
    write(repo, issue("t-b", status="in_progress"), issue("t-c", status="closed"),
          issue("t-a", dependencies=[dep("t-a", "t-b"), dep("t-a", "t-c"), dep("t-a", "t-gone")]))
    got = JsonlTracker(repo).show("t-a")
    assert [(b.id, b.status) for b in got.blockers] == [("t-b", "in_progress"), ("t-c", "closed")]
    assert [b.id for b in got.open_blockers] == ["t-b"]


def test_create_and_add_dependency(repo: Path):
    tracker = JsonlTracker(repo, actor="me")
    tracker.init()
    a = tracker.create("first", "desc", priority=1)
    assert re.fullmatch(r"repo-[0-9a-z]{4,}", a.id) and a.description == "desc" and a.priority == 1
    b = tracker.create("second", deps=[a.id])
    c = tracker.create("third", id="repo-fixed", issue_type="bug")
    assert c.id == "repo-fixed" and [i.id for i in tracker.ready()] == [a.id, c.id]
    assert [x.id for x in b.open_blockers] == [a.id]
    tracker.add_dependency(c.id, b.id)
    tracker.add_dependency(c.id, b.id)  # again: no duplicate
    assert [i.id for i in tracker.ready()] == [a.id]
    with pytest.raises(TrackerError, match="already exists with type blocks"):
        tracker.add_dependency(c.id, b.id, type="related")
    with pytest.raises(IssueNotFound):
        tracker.create("x", deps=["repo-nope"])
    with pytest.raises(TrackerError, match="already exists"):
        tracker.create("x", id="repo-fixed")
    lines = [json.loads(line) for line in tracker.path.read_text().splitlines()]
    assert all(line["_type"] == "issue" for line in lines) and len(lines) == 3
    assert len(lines[2]["dependencies"]) == 1


def test_fixture_format_files(repo: Path):
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(FIXTURES.glob("*.issues*.jsonl")))
    path = repo / ".beads" / "issues.jsonl"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    tracker = JsonlTracker(repo, actor="me")
    # bd-dolt.2: parent bd-dolt not in the file; rig/gate/epic/ephemeral/pinned/closed all excluded.
    assert [i.id for i in tracker.ready()] == ["bd-dolt.2"]
    before = path.read_text(encoding="utf-8").splitlines()
    tracker.comment("bd-dolt.2", "picked up")
    after = path.read_text(encoding="utf-8").splitlines()
    changed = [n for n, (x, y) in enumerate(zip(before, after, strict=True)) if x != y]
    assert len(changed) == 1 and json.loads(after[changed[0]])["id"] == "bd-dolt.2"
    assert json.loads(after[changed[0]])["owner"] == "steve.yegge@gmail.com"
    assert [c["text"] for c in tracker.comments("bd-0vu3q")] == ["BG found a regression in production"]
