"""The tracker contract: what the runner relies on from bd, pinned against the real bd (v1.0.5) and
the stand-in alike. Each test runs twice (`[real]`, `[standin]`), through the runner's own
`BdTracker` (what the runner really calls), plus raw CLI checks where the raw shape is the
contract. The stand-in is a verified fake only as far as these tests go: it is used for fault
injection, and whatever it does differently from the real bd is listed in DIFFERENCES below.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from beads_runner.errors import ClaimConflict, IssueNotFound, TrackerBusy, TrackerUnavailable
from beads_runner.tracker import parse
from beads_runner.tracker.base import NEEDS_HUMAN_LABEL
from beads_runner.tracker.bd import BdTracker
from beads_runner.tracker.parse import CloseBlocked
from tests.bd_backends import BdBackend
from tests.helpers import new_repo

ACTOR = "runner"

# The stand-in against the real bd v1.0.5: what this suite found and fixed, and what is left.
DIFFERENCES = """
What the suite found the stand-in doing differently from the real bd v1.0.5, now fixed in it:
- re-closing a closed issue: the real bd closes it again, replacing close_reason and closed_at (the
  stand-in kept the first); BdTracker.close now reads first, so the first reason stays for both.
- a `blocks` dependency between an epic and a non-epic: the real bd refuses it ("epics can only
  block other epics, not tasks" / "tasks can only block other tasks, not epics").
- per-id failures of update and close (a claim held by another, open blockers, a missing id) go to
  stderr as plain text, exit 1 when no id succeeded; a missing id's words differ by command.
- `bd label add` of a missing id exits 0 with `[]`; `bd init` takes --skip-hooks/--skip-agents.
- BD_JSON_ENVELOPE=1 wraps error objects too: {"data": {"error": ...}, "schema_version": 1}.
- a bd waiting for a held store and stopped with SIGTERM prints a JSON error ending "the database
  is locked by another dolt process" (the stand-in used to die silently).
What still differs, on purpose (the runner relies on none of it):
- storage: the stand-in keeps issues in .beads/issues.jsonl (beads' export format) under one fcntl
  lock; the real bd keeps them in embedded Dolt (.beads/embeddeddolt/), and `bd init` also stages
  .beads/ files and .gitignore in git.
- ids: both print <prefix>-<base36>; the real bd's are shorter (tt-28h). Ids are opaque to the runner.
- extra fields: the real bd prints more (created_by, ...); the runner ignores unknown fields.
- lock contention: the real bd waits for the store (Dolt retries its open with backoff, without a
  deadline); the stand-in waits on its flock, or, with BD_STANDIN_LOCK=fail, fails at once with
  "database is locked" (fault injection of the SQLite-era lock errors).
- speed: a real bd call opens the Dolt store each time; it costs several times a stand-in call
  (bench/RESULTS.md, section "bd calls", has the figures).
"""


def ids(issues) -> list[str]:
    return [issue.id for issue in issues]


# -- ready ----------------------------------------------------------------------------------------


def test_ready_offers_open_unblocked_work_highest_priority_first(bd: BdBackend, repo: Path):
    low = bd.create(repo, "low", "-p", "3")
    high = bd.create(repo, "high", "-p", "0")
    mid = bd.create(repo, "mid", "-p", "1")

    assert ids(bd.tracker(repo).ready()) == [high, mid, low]


def test_an_open_or_in_progress_blocker_keeps_an_issue_out_of_ready_until_it_closes(bd: BdBackend, repo: Path):
    blocker = bd.create(repo, "blocker", "-p", "2")
    blocked = bd.create(repo, "blocked", "-p", "0")
    bd.run(repo, "dep", "add", blocked, blocker)  # `dep add A B`: A depends on B
    tracker = bd.tracker(repo)
    assert ids(tracker.ready()) == [blocker]

    tracker.claim(blocker)  # in progress still blocks
    assert ids(tracker.ready()) == []
    tracker.close(blocker, "done")

    assert ids(tracker.ready()) == [blocked]


def test_created_with_deps_blocks_like_dep_add(bd: BdBackend, repo: Path):
    blocker = bd.create(repo, "blocker")
    blocked = bd.create(repo, "blocked", "--deps", blocker)

    assert ids(bd.tracker(repo).ready()) == [blocker]
    assert [b.id for b in bd.tracker(repo).show(blocked).open_blockers] == [blocker]


def test_related_dependencies_never_block(bd: BdBackend, repo: Path):
    first = bd.create(repo, "first", "-p", "1")
    second = bd.create(repo, "second", "-p", "2")
    bd.run(repo, "dep", "add", second, first, "--type", "related")

    assert ids(bd.tracker(repo).ready()) == [first, second]


def test_epics_and_infrastructure_types_are_never_offered(bd: BdBackend, repo: Path):
    task = bd.create(repo, "a task", "-p", "2")
    epic = bd.create(repo, "an epic", "-t", "epic", "-p", "0")
    infrastructure = [bd.create(repo, f"a {kind}", "-t", kind, "-p", "0") for kind in ("gate", "molecule", "message")]

    assert ids(bd.tracker(repo).ready()) == [task]
    # bd itself leaves out the infrastructure types but offers epics: the runner excludes those
    raw = [issue["id"] for issue in bd.json(repo, "ready")]
    assert epic in raw and task in raw
    assert not set(infrastructure) & set(raw)


def test_a_child_of_a_blocked_epic_waits_for_the_epics_blocker(bd: BdBackend, repo: Path):
    first = bd.create(repo, "first milestone", "-t", "epic", "-p", "0")
    second = bd.create(repo, "second milestone", "-t", "epic")
    child = bd.create(repo, "child", "--parent", second, "-p", "0")
    bd.run(repo, "dep", "add", second, first)  # epics block epics only (bd refuses an epic-task block)
    tracker = bd.tracker(repo)
    assert ids(tracker.ready()) == []
    assert tracker.show(child).parent == second

    tracker.close(first, "done")

    assert ids(tracker.ready()) == [child]


def test_blocks_joins_two_epics_or_two_tasks_never_an_epic_and_a_task(bd: BdBackend, repo: Path):
    epic = bd.create(repo, "epic", "-t", "epic")
    task = bd.create(repo, "task")

    for blocked, blocker in ((epic, task), (task, epic)):
        refused = bd.run(repo, "dep", "add", blocked, blocker, check=False)
        assert refused.returncode == 1 and "can only block other" in refused.stderr
    assert bd.run(repo, "dep", "add", task, epic, "--type", "related", check=False).returncode == 0


def test_ready_limit_truncates_in_order_and_zero_means_all(bd: BdBackend, repo: Path):
    made = [bd.create(repo, f"p{p}", "-p", str(p)) for p in (3, 0, 2, 1)]
    tracker = bd.tracker(repo)

    assert ids(tracker.ready(limit=2)) == [made[1], made[3]]
    assert ids(tracker.ready(limit=0)) == [made[1], made[3], made[2], made[0]]
    raw = bd.run(repo, "ready", "--limit", "1", "--json")
    assert [issue["id"] for issue in json.loads(raw.stdout)] == [made[1]]
    assert raw.stderr.startswith("Showing 1 of 4 ready issues.")  # the notice never mixes into the JSON


def test_nothing_ready_is_an_empty_list(bd: BdBackend, repo: Path):
    assert bd.tracker(repo).ready() == []
    assert bd.json(repo, "ready") == []


# -- claim --------------------------------------------------------------------------------------------


def test_ready_claim_takes_the_first_ready_unassigned_issue_and_reads_it_back(bd: BdBackend, repo: Path):
    low = bd.create(repo, "low", "-p", "2")
    high = bd.create(repo, "high", "-p", "1")
    bd.create(repo, "someone else's", "-p", "0", "--assignee", "alice")
    tracker = bd.tracker(repo, actor=ACTOR)

    first = tracker.claim_next()
    second = tracker.claim_next()

    assert (first.id, first.status, first.assignee) == (high, "in_progress", ACTOR)
    assert (second.id, second.status, second.assignee) == (low, "in_progress", ACTOR)
    assert tracker.claim_next() is None
    shown = bd.show(repo, high)
    assert (shown["status"], shown["assignee"]) == ("in_progress", ACTOR)
    assert shown.get("started_at")


def test_raw_ready_claim_prints_a_one_item_array_then_an_empty_one(bd: BdBackend, repo: Path):
    only = bd.create(repo, "only")

    claimed = bd.json(repo, "ready", "--claim", actor=ACTOR)
    again = bd.json(repo, "ready", "--claim", actor=ACTOR)

    assert [(i["id"], i["status"], i["assignee"]) for i in claimed] == [(only, "in_progress", ACTOR)]
    assert again == []


def test_update_claim_is_ours_again_but_refused_to_another_actor(bd: BdBackend, repo: Path):
    issue = bd.create(repo, "contested")
    ours, theirs = bd.tracker(repo, actor=ACTOR), bd.tracker(repo, actor="other-runner")

    claimed = ours.claim(issue)
    assert (claimed.status, claimed.assignee) == ("in_progress", ACTOR)
    assert ours.claim(issue).assignee == ACTOR  # idempotent for the holder
    with pytest.raises(ClaimConflict) as caught:
        theirs.claim(issue)

    assert ACTOR in caught.value.message
    raw = bd.run(repo, "update", issue, "--claim", "--json", actor="other-runner", check=False)
    assert raw.returncode == 1
    assert f"already claimed by {ACTOR}" in raw.stderr
    assert bd.show(repo, issue)["assignee"] == ACTOR
    bd.run(repo, "close", issue, "--reason", "done", "--json")
    closed = bd.run(repo, "update", issue, "--claim", "--json", actor=ACTOR, check=False)
    assert closed.returncode == 1
    assert closed.stderr.strip() == f"Error claiming {issue}: issue not claimable: status closed"


def test_update_claim_does_not_check_blockers_so_check_deps_must(bd: BdBackend, repo: Path):
    blocker = bd.create(repo, "blocker")
    blocked = bd.create(repo, "blocked", "--deps", blocker)

    claimed = bd.tracker(repo).claim(blocked)

    assert claimed.status == "in_progress"
    assert [b.id for b in claimed.open_blockers] == [blocker]


def test_claimed_lists_only_this_actors_issues_in_progress(bd: BdBackend, repo: Path):
    mine, theirs, untouched = (bd.create(repo, title) for title in ("mine", "theirs", "untouched"))
    tracker = bd.tracker(repo, actor=ACTOR)
    tracker.claim(mine)
    bd.tracker(repo, actor="other-runner").claim(theirs)

    assert ids(tracker.claimed()) == [mine]
    assert untouched in ids(tracker.ready())
    # Neither a released, a closed nor a handed-over issue is a claim any more.
    more = [bd.create(repo, title) for title in ("released", "closed", "handed")]
    for issue_id in more:
        tracker.claim(issue_id)
    assert sorted(ids(tracker.claimed())) == sorted([mine, *more])
    tracker.release(more[0])
    tracker.close(more[1], "done")
    tracker.hand_to_human(more[2])
    assert ids(tracker.claimed()) == [mine]


# -- show ---------------------------------------------------------------------------------------------


def test_show_gives_the_fields_the_runner_reads_and_blockers_with_their_status(bd: BdBackend, repo: Path):
    blocker = bd.create(repo, "blocker")
    issue = bd.create(repo, "Add a thing", "-d", "Line one\nline two: ünïcode", "-t", "bug", "-p", "1",
                      "--deps", blocker)
    tracker = bd.tracker(repo)

    shown = tracker.show(issue)

    assert (shown.id, shown.title, shown.description) == (issue, "Add a thing", "Line one\nline two: ünïcode")
    assert (shown.issue_type, shown.priority, shown.status, shown.assignee) == ("bug", 1, "open", "")
    assert [(b.id, b.type, b.status) for b in shown.blockers] == [(blocker, "blocks", "open")]
    tracker.close(blocker, "done")
    assert [(b.id, b.status) for b in tracker.show(issue).blockers] == [(blocker, "closed")]
    assert tracker.show(issue).open_blockers == []
    raw = bd.json(repo, "show", issue)  # an array, even for one id
    assert isinstance(raw, list) and [item["id"] for item in raw] == [issue]


# -- comments -----------------------------------------------------------------------------------------


def test_comments_round_trip_with_the_actor_and_text_that_looks_like_a_flag(bd: BdBackend, repo: Path):
    issue = bd.create(repo, "commented")
    tracker = bd.tracker(repo, actor=ACTOR)
    texts = ["--force is not a flag here", "failed at step verify\n\n```\nAssertionError: 41 != 42\n```"]

    for text in texts:
        tracker.comment(issue, text)
    comments = tracker.comments(issue)

    assert [(c["text"], c["author"], c["issue_id"]) for c in comments] == [(t, ACTOR, issue) for t in texts]
    assert all(c["id"] and c["created_at"] for c in comments)
    added = bd.json(repo, "comments", "add", issue, "raw", actor=ACTOR)
    assert isinstance(added, dict) and added["text"] == "raw" and added["issue_id"] == issue


# -- labels and status --------------------------------------------------------------------------------


def test_hand_to_human_blocks_labels_and_takes_it_out_of_ready(bd: BdBackend, repo: Path):
    issue = bd.create(repo, "too hard")
    tracker = bd.tracker(repo)
    tracker.claim(issue)

    tracker.hand_to_human(issue)

    shown = tracker.show(issue)
    assert shown.status == "blocked" and NEEDS_HUMAN_LABEL in shown.labels
    assert issue not in ids(tracker.ready())


def test_label_add_prints_what_it_added(bd: BdBackend, repo: Path):
    issue = bd.create(repo, "labelled")

    added = bd.json(repo, "label", "add", issue, "frontend")

    assert [(a["status"], a["issue_id"], a["label"]) for a in added] == [("added", issue, "frontend")]
    assert bd.tracker(repo).show(issue).labels == ["frontend"]


def test_release_gives_a_claim_back_to_the_queue(bd: BdBackend, repo: Path):
    issue = bd.create(repo, "given back")
    tracker = bd.tracker(repo)
    tracker.claim(issue)

    tracker.release(issue)

    shown = tracker.show(issue)
    assert (shown.status, shown.assignee) == ("open", "")
    assert ids(tracker.ready()) == [issue]


def test_status_changes_read_back(bd: BdBackend, repo: Path):
    issue = bd.create(repo, "moving")
    for status in ("in_progress", "blocked", "deferred", "open"):
        bd.run(repo, "update", issue, "--status", status, "--json")
        assert bd.tracker(repo).show(issue).status == status


# -- close --------------------------------------------------------------------------------------------


def test_close_with_a_reason_is_read_back_and_a_second_close_is_no_error(bd: BdBackend, repo: Path):
    issue = bd.create(repo, "landing")
    tracker = bd.tracker(repo)
    tracker.claim(issue)
    reason = "Landed 0123abcd on main (gates: diff=pass tests=pass)"

    closed = tracker.close(issue, reason)
    again = tracker.close(issue, reason)

    assert (closed.status, closed.close_reason) == ("closed", reason)
    assert (again.status, again.close_reason) == ("closed", reason)
    shown = bd.show(repo, issue)
    assert shown["close_reason"] == reason and shown.get("closed_at")
    assert issue not in ids(tracker.ready())


def test_a_closed_issue_keeps_its_first_reason_though_bd_itself_would_replace_it(bd: BdBackend, repo: Path):
    by_person = bd.create(repo, "closed by a person")
    bd.run(repo, "close", by_person, "--reason", "done by hand", "--json")

    assert bd.tracker(repo).close(by_person, "Landed 0123abcd on main").close_reason == "done by hand"
    assert bd.show(repo, by_person)["close_reason"] == "done by hand"
    bd.run(repo, "close", by_person, "--reason", "closed again", "--json")  # raw bd: closes again
    assert bd.show(repo, by_person)["close_reason"] == "closed again"


def test_close_is_refused_while_a_blocker_is_open(bd: BdBackend, repo: Path):
    blocker = bd.create(repo, "blocker")
    blocked = bd.create(repo, "blocked", "--deps", blocker)
    tracker = bd.tracker(repo)

    with pytest.raises(CloseBlocked) as caught:
        tracker.close(blocked, "too early")

    assert blocker in caught.value.message
    assert tracker.show(blocked).status == "open"
    raw = bd.run(repo, "close", blocked, "--reason", "x", "--json", check=False)
    assert raw.returncode == 1 and f"cannot close {blocked}: blocked by open issues" in raw.stderr
    tracker.close(blocker, "done")
    assert tracker.close(blocked, "now").status == "closed"


# -- errors -------------------------------------------------------------------------------------------


def test_a_missing_id_is_issue_not_found_for_every_call(bd: BdBackend, repo: Path):
    tracker = bd.tracker(repo)
    missing = "tt-nosuch"
    calls = {
        "show": lambda: tracker.show(missing),
        "claim": lambda: tracker.claim(missing),
        "close": lambda: tracker.close(missing, "x"),
        "comment": lambda: tracker.comment(missing, "x"),
        "comments": lambda: tracker.comments(missing),
    }
    for name, call in calls.items():
        try:
            call()
        except IssueNotFound:
            continue
        pytest.fail(f"{name} of a missing id did not raise IssueNotFound")


def test_the_raw_shapes_of_a_missing_id(bd: BdBackend, repo: Path):
    """What each command prints for an id that does not exist (bd v1.0.5): where the words go
    differs by command, so the runner reads both streams (parse.check_output)."""
    missing = "tt-nosuch"
    no_match = f'no issue found matching "{missing}"'

    def raw(*args: str) -> tuple[int, object, str]:
        proc = bd.run(repo, *args, "--json", check=False, actor=ACTOR)
        return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr.strip()

    assert raw("show", missing) == (1, {"error": "no issues found matching the provided IDs", "schema_version": 1},
                                    f"Error fetching {missing}: {no_match}")
    assert raw("update", missing, "--claim") == (1, None, f"Error resolving {missing}: {no_match}")
    assert raw("close", missing, "--reason", "x") == (
        1, {"error": f"resolving ID {missing}: {no_match}", "schema_version": 1}, "")
    for args in (("comments", missing), ("comments", "add", missing, "text")):
        assert raw(*args) == (1, {"error": f"resolving {missing}: {no_match}", "schema_version": 1}, "")
    # bd label add reports a missing id and still exits 0: the runner labels through `update` instead
    assert raw("label", "add", missing, "x") == (0, [], f"Error resolving {missing}: {no_match}")


def test_no_workspace_is_unavailable_and_says_to_run_bd_init(bd: BdBackend, tmp_path: Path):
    plain = new_repo(tmp_path / "plain")

    with pytest.raises(TrackerUnavailable) as caught:
        bd.tracker(plain).ready()

    assert "no beads database" in caught.value.message
    assert "bd init" in (caught.value.fix or "")
    raw = bd.run(plain, "ready", "--json", check=False)
    assert (raw.returncode, raw.stdout) == (1, "")
    assert raw.stderr.startswith("Error: no beads database found\n")


def test_a_write_while_another_process_holds_the_store_waits_for_it_and_lands(bd: BdBackend, repo: Path):
    issue = bd.create(repo, "written after the holder lets go")
    tracker = bd.tracker(repo)
    holding = threading.Event()

    def hold_briefly() -> None:
        with bd.hold_store(repo):
            holding.set()
            time.sleep(1.0)  # long enough for the write below to start while the store is held

    holder = threading.Thread(target=hold_briefly)
    holder.start()
    holding.wait(10)
    tracker.comment(issue, "waited")
    holder.join()

    assert [c["text"] for c in tracker.comments(issue)] == ["waited"]


def test_a_store_held_past_the_timeout_is_busy_in_bds_words_and_nothing_is_written(bd: BdBackend, repo: Path):
    """bd waits for a held store without a deadline. At tracker.timeout the runner stops it with
    SIGTERM, and bd says it was waiting for the lock: a retryable TrackerBusy, nothing written."""
    issue = bd.create(repo, "written under contention")
    impatient = bd.tracker(repo, timeout=2, busy_attempts=1)
    with bd.hold_store(repo):
        with pytest.raises(TrackerBusy) as caught:
            impatient.comment(issue, "never written")

    assert "locked by another dolt process" in caught.value.message
    assert not getattr(caught.value, "timed_out", False)  # so BdTracker retries it (busy_attempts)
    bd.tracker(repo).comment(issue, "written")
    assert [c["text"] for c in bd.tracker(repo).comments(issue)] == ["written"]


# -- what doctor reports ------------------------------------------------------------------------------


def test_version_and_store_mode(bd: BdBackend, repo: Path):
    tracker = bd.tracker(repo)

    assert parse.at_least(tracker.version(), 1, 0, 4)  # `ready --claim` exists from 1.0.4
    assert tracker.store_mode() == "embedded"


def test_the_json_envelope_changes_nothing_for_the_runner(bd: BdBackend, repo: Path):
    """BD_JSON_ENVELOPE=1 wraps every JSON output, errors too, in {"data": ..., "schema_version": 1}."""
    env = {**bd.env, "BD_JSON_ENVELOPE": "1"}
    first = bd.create(repo, "first", "-p", "1")
    bd.create(repo, "second", "--deps", first)
    tracker = BdTracker(repo, command=str(bd.executable), actor=ACTOR, env=env)

    assert ids(tracker.ready()) == [first]
    assert tracker.claim_next().id == first
    tracker.comment(first, "enveloped")
    assert [c["text"] for c in tracker.comments(first)] == ["enveloped"]
    assert (tracker.version(), tracker.store_mode()) == (bd.json(repo, "version")["version"], "embedded")
    with pytest.raises(IssueNotFound):
        tracker.show("tt-nosuch")
    raw = bd.run(repo, "show", "tt-nosuch", "--json", env=env, check=False)
    assert json.loads(raw.stdout) == {"data": {"error": "no issues found matching the provided IDs"},
                                      "schema_version": 1}
