"""The daemon with a real subprocess agent (the `command` kind) and the jsonl tracker: what it takes,
what it leaves alone, and what it refuses."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import command_agent_repo, git
from beads_runner.config import load_config
from beads_runner.daemon import Runner
from beads_runner.services import Services, register_services
from beads_runner.tracker.jsonl import JsonlTracker

AGENT = textwrap.dedent("""\
    import os, sys
    prompt = sys.stdin.read()
    issue = os.environ["BEADS_ISSUE_ID"]
    with open(f"work-{issue}.txt", "w") as fh:
        fh.write(prompt[:40])
    print(f"wrote work-{issue}.txt")
""")



@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / "agent.py").write_text(AGENT)
    return command_agent_repo(tmp_path / "repo", tmp_path / "agent.py")


def run_once(repo: Path) -> int:
    svc = register_services(Services(repo, load_config(repo)))
    return Runner(svc).run(once=True, poll_interval=0.1)


def test_ready_issues_land_and_close(repo):
    tracker = JsonlTracker(repo)
    a = tracker.create("First", id="t-1")
    b = tracker.create("Second", id="t-2", deps=[a.id])
    assert run_once(repo) == 0
    assert tracker.show(a.id).status == "closed" and tracker.show(b.id).status == "closed"
    assert (repo / "work-t-1.txt").exists() and (repo / "work-t-2.txt").exists()
    assert git(repo, "log", "--format=%s", "-2").splitlines() == ["Second (t-2)", "First (t-1)"]


def test_a_stale_claim_of_our_actor_is_taken_back(repo):
    tracker = JsonlTracker(repo)
    tracker.create("Left behind", id="t-stale")
    tracker.claim("t-stale")  # a runner claimed it, then died before submitting a run
    assert tracker.ready() == []
    assert run_once(repo) == 0
    assert tracker.show("t-stale").status == "closed"


def test_an_issue_claimed_by_someone_else_is_never_touched(repo):
    JsonlTracker(repo).create("Alice's", id="t-alice")
    JsonlTracker(repo, actor="alice").claim("t-alice")
    before = (repo / ".beads" / "issues.jsonl").read_text()
    assert run_once(repo) == 0
    assert (repo / ".beads" / "issues.jsonl").read_text() == before
    assert not (repo / ".beads-runner" / "worktrees" / "t-alice").exists()


def test_an_unsafe_id_is_refused_with_a_comment_and_never_names_a_branch(repo):
    path = repo / ".beads" / "issues.jsonl"
    bad = "t-1;rm -rf ~"
    path.write_text(json.dumps({"id": bad, "title": "Hostile", "status": "open", "priority": 0,
                                "issue_type": "task"}) + "\n")
    JsonlTracker(repo).create("Fine", id="t-ok")
    assert run_once(repo) == 0
    tracker = JsonlTracker(repo)
    hostile = tracker.show(bad)
    assert hostile.status == "blocked" and "needs-human" in hostile.labels
    assert "not safe as a git branch" in tracker.comments(bad)[-1]["text"]
    assert tracker.show("t-ok").status == "closed"
    assert "rm" not in git(repo, "branch", "--list", "--format=%(refname)")


def test_an_agent_that_changes_nothing_fails_after_three_tries_and_goes_to_a_person(repo, tmp_path):
    (tmp_path / "agent.py").write_text("import sys; sys.stdin.read(); print('nothing to do')\n")
    tracker = JsonlTracker(repo)
    tracker.create("Impossible", id="t-none")
    assert run_once(repo) == 1
    issue = tracker.show("t-none")
    assert issue.status == "blocked" and "needs-human" in issue.labels
    text = tracker.comments("t-none")[-1]["text"]
    assert "failed at step process after 3 attempt(s)" in text and "without changing any file" in text


SPENDING_AGENT = textwrap.dedent("""\
    import json, os, sys, time
    sys.stdin.read()
    issue = os.environ["BEADS_ISSUE_ID"]
    open(f"work-{issue}.txt", "w").write("done")
    now = int(time.time() * 1000)
    print(json.dumps({"type": "step_finish", "timestamp": now, "sessionID": "ses_x",
                      "part": {"reason": "stop", "cost": 0.75, "tokens": {"total": 10}}}))
""")


def test_a_spent_daily_budget_stops_new_sessions_but_lets_running_ones_finish(repo, tmp_path):
    (tmp_path / "agent.py").write_text(SPENDING_AGENT)
    config = repo / ".beads-runner.toml"
    config.write_text(config.read_text().replace("[engine.retry]", "[engine]\nmax_sessions = 1\n[engine.retry]")
                      .replace('kind = "command"', 'kind = "command"\ndaily_budget_usd = 0.5'))
    git(repo, "commit", "-qam", "budget")
    tracker = JsonlTracker(repo)
    tracker.create("First", id="t-1", priority=0)
    tracker.create("Second", id="t-2", priority=1)
    assert run_once(repo) == 0  # and it returns: a run waiting on the budget does not keep --once alive
    # One session (max_sessions = 1) spent 0.75 of a 0.5 budget: it finished and landed; no other
    # session started. (Both issues may be claimed, engine.prefetch; either may take the one slot.)
    statuses = sorted(tracker.show(i).status for i in ("t-1", "t-2"))
    assert statuses[0] == "closed" and statuses[1] in ("open", "in_progress")
    assert len(list(repo.glob("work-*.txt"))) == 1
    assert list((repo / ".beads-runner" / "worktrees").iterdir()) == []  # landed: removed; waiting: none made


def test_what_the_gates_leave_behind_is_never_committed(repo, tmp_path):
    gate = tmp_path / "gate.py"
    gate.write_text("import pathlib\npathlib.Path('coverage.dat').write_text('gate output')\n"
                    "pathlib.Path('cache').mkdir(exist_ok=True)\npathlib.Path('cache/x.pyc').write_bytes(b'1')\n")
    config = repo / ".beads-runner.toml"
    config.write_text(config.read_text() + f'\n[[gates]]\nname = "cov"\nrun = "{sys.executable} {gate}"\n')
    git(repo, "commit", "-qam", "a gate with byproducts")
    JsonlTracker(repo).create("Work", id="t-by")
    assert run_once(repo) == 0
    files = git(repo, "show", "--name-only", "--format=", "main").split()
    assert files == ["work-t-by.txt"]


def test_bd_tracker_knows_the_times_of_its_own_calls(tmp_path, monkeypatch):
    import time as _time

    from beads_runner.tracker.bd import OWN_CHANGE_SLACK_NS, BdTracker
    from tests.fakes.bd_standin import make_beads_repo, put_bd_on_path

    put_bd_on_path(monkeypatch)
    repo = make_beads_repo(tmp_path / "repo")
    tracker = BdTracker(repo, actor="runner")
    before = _time.time_ns()
    tracker.ready()
    after = _time.time_ns()
    assert tracker.changed_store_at((before + after) // 2)
    assert not tracker.changed_store_at(before - 10 * OWN_CHANGE_SLACK_NS)
    assert not tracker.changed_store_at(after + 10 * OWN_CHANGE_SLACK_NS)


def test_an_engine_that_does_not_answer_is_asked_again_not_fatal(repo):
    # Any engine (Hatchet's API down, say) may raise EngineUnavailable: the poll claims nothing and
    # the loop goes on; `--once` does not call it idle; an unknown end is not a success.
    from workflows.engine import EngineUnavailable
    from workflows.local import LocalEngine
    from workflows.task_flow import TASK_FLOW

    class Down(LocalEngine):
        down = True

        def runs(self, *args, **kwargs):
            if self.down:
                raise EngineUnavailable("the engine is down", fix="start it")
            return super().runs(*args, **kwargs)

        def has_active_runs(self):
            if self.down:
                raise EngineUnavailable("the engine is down", fix="start it")
            return super().has_active_runs()

        def settled_run(self, run_id):
            return None

    JsonlTracker(repo).create("Ready", id="t-1")
    svc = register_services(Services(repo, load_config(repo)))
    engine = Down(repo / ".beads-runner" / "state.db", TASK_FLOW)
    runner = Runner(svc, engine=engine)
    assert runner.poll_once().submitted == []
    assert JsonlTracker(repo).show("t-1").status == "open"  # nothing claimed while it was down
    runner._drained_at = (0, 0)
    assert runner._worth_asking() and not runner._idle()
    runner.submitted.append("run-x")
    assert runner.exit_code() == 1
    engine.down = False
    assert len(runner.poll_once().submitted) == 1
