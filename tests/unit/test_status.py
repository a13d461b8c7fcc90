"""`status`, `logs` and `review` against runs recorded by the real engine and daemon.

The agent is the `command` kind: a Python script that prints a real opencode event stream
(tests/fixtures/opencode/run-success.events.ndjson, re-stamped now, with a cost we set on each
step_finish) and writes a file, except for issues whose id says `fail`, which change nothing and
so fail after three tries and go to a person.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers import git, new_repo
from beads_runner.cli import main
from beads_runner.config import load_config
from beads_runner.daemon import Runner
from beads_runner.services import Services, register_services
from beads_runner.status import collect_status, render_status, render_text, review_data, stream_logs
from beads_runner.tracker.jsonl import JsonlTracker
from workflows.task_flow import TaskInput

EVENTS = Path(__file__).resolve().parents[1] / "fixtures" / "opencode" / "run-success.events.ndjson"

STEP_COST = 0.125  # per step_finish; the stream has two, so 0.25 a session
SESSION_TOKENS = 109 + 110

AGENT = textwrap.dedent("""\
    import json, os, pathlib, sys, time
    sys.stdin.read()
    issue = os.environ["BEADS_ISSUE_ID"]
    events = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    flag = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else None
    for event in events:
        event["timestamp"] = int(time.time() * 1000)
        if event["type"] == "step_finish":
            event["part"]["cost"] = %r
        print(json.dumps(event), flush=True)
        if flag is not None and event["type"] == "step_finish":
            while not flag.exists():  # hold the session open: the test looks at it running
                time.sleep(0.05)
        time.sleep(0.01)
    if "fail" not in issue:
        pathlib.Path(f"work-{issue}.txt").write_text("done\\n")
""") % STEP_COST

def make_repo(root: Path, *, max_sessions: int = 3, hold: Path | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    repo = root / "repo"
    new_repo(repo)
    (root / "agent.py").write_text(AGENT)
    events = root / "events.ndjson"
    events.write_text(EVENTS.read_text())
    args = [str(events)] + ([str(hold)] if hold else [])
    (repo / ".gitignore").write_text(".beads-runner/\n")
    (repo / ".beads-runner.toml").write_text(textwrap.dedent(f"""\
        [tracker]
        kind = "jsonl"
        [agent]
        kind = "command"
        command = "{sys.executable} {root / 'agent.py'}"
        args = {json.dumps(args)}
        [engine]
        max_sessions = {max_sessions}
        [engine.retry]
        backoff = "0.05s"
        """))
    (repo / ".beads").mkdir()
    (repo / ".beads" / "issues.jsonl").write_text("")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    return repo


def services(repo: Path) -> Services:
    return register_services(Services(repo, load_config(repo)))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """One landed run (t-ok) and one failed after three sessions (t-fail), recorded for real."""
    repo = make_repo(tmp_path_factory.mktemp("recorded"))
    tracker = JsonlTracker(repo)
    tracker.create("Add the greeting", id="t-ok")
    tracker.create("Impossible fail thing", id="t-fail")
    assert Runner(services(repo)).run(once=True, poll_interval=0.1) == 1
    assert tracker.show("t-ok").status == "closed" and tracker.show("t-fail").status == "blocked"
    return repo


def cli(repo: Path, *args: str):
    result = CliRunner().invoke(main, ["--repo", str(repo), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# --- status --------------------------------------------------------------------------------------------
def test_status_json_has_stable_keys_runs_failures_and_spending(recorded):
    data = json.loads(cli(recorded, "status", "--json"))
    assert set(data) == {"repo", "generated_at", "sessions", "spending", "parked", "running", "queued", "blocked",
                         "failures", "recent"}
    assert data["parked"] == []
    assert data["sessions"] == {"in_use": 0, "cap": 3}
    assert data["running"] == [] and data["queued"] == []
    recent = {r["issue_id"]: r for r in data["recent"]}
    ok, failed = recent["t-ok"], recent["t-fail"]
    assert ok["phase"] == "landed" and ok["title"] == "Add the greeting" and ok["commit"]
    assert ok["tokens"] == SESSION_TOKENS and ok["cost"] == pytest.approx(2 * STEP_COST)
    assert failed["phase"] == "failed" and failed["tokens"] == 3 * SESSION_TOKENS
    assert failed["cost"] == pytest.approx(6 * STEP_COST)
    assert [s["source"] for s in failed["sessions"]] == ["events"] * 3
    [blocked] = data["blocked"]
    assert blocked["issue_id"] == "t-fail" and blocked["failed_step"] == "process"
    assert "without changing any file" in blocked["error"]
    assert blocked["reason"]["code"] == "with_person" and blocked["reason"]["step"] == "process"
    assert {r["issue_id"]: r["reason"]["code"] for r in data["recent"]} == {"t-ok": "landed", "t-fail": "with_person"}
    fails = [f for f in data["failures"] if f["issue_id"] == "t-fail"]
    assert [f["attempt"] for f in fails] == [3, 2, 1] and [f["final"] for f in fails] == [True, False, False]
    assert data["spending"]["spent_usd"] == pytest.approx(8 * STEP_COST)
    assert data["spending"]["budget_usd"] is None and data["spending"]["exceeded"] is False


def test_status_for_people_shows_blocked_failures_recent_and_spending(recorded):
    out = cli(recorded, "status")
    assert "sessions in use: 0/3" in out
    assert "nothing running" in out
    assert "spent today" in out and "$1.00" in out and "no daily budget" in out
    blocked = out[out.index("BLOCKED"):out.index("LAST FAILURES")]
    assert "t-fail" in blocked and "Impossible fail thing" in blocked and "without changing any file" in blocked
    assert "t-ok" not in blocked
    recent = out[out.index("RECENT"):]
    assert "Landed" in recent and "failed at process" in recent
    assert "None" not in out


def test_status_says_when_the_daily_budget_is_spent(recorded):
    svc = services(recorded)
    over = collect_status(svc, budget_usd=0.5)
    assert over["spending"]["exceeded"] and over["spending"]["budget_usd"] == 0.5
    text = render_text(render_status(over))
    assert "daily budget spent: no new sessions start until tomorrow (UTC)" in text
    under = collect_status(svc, budget_usd=5.0)
    assert not under["spending"]["exceeded"]
    text = render_text(render_status(under))
    assert "of $5.00" in text and "daily budget spent" not in text


def test_status_shows_a_running_session_with_tokens_so_far_and_a_queued_issue(tmp_path):
    hold = tmp_path / "release"
    repo = make_repo(tmp_path / "live", max_sessions=1, hold=hold)
    tracker = JsonlTracker(repo)
    tracker.create("First in line", id="t-a")
    tracker.create("Second in line", id="t-b")
    svc = services(repo)
    runner = Runner(svc)
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", runner.run(once=True, poll_interval=0.1)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        data = None
        submitted = False
        while time.monotonic() < deadline:
            data = collect_status(svc)
            if data["running"] and not submitted:
                # The daemon claims no more than the free sessions; `submit` queues one anyway.
                other = {"t-a", "t-b"} - {data["running"][0]["issue_id"]}
                runner.engine.submit(TaskInput(issue_id=other.pop(), repo=str(repo)))
                submitted = True
            if data["running"] and data["running"][0]["tokens"] and data["queued"]:
                break
            time.sleep(0.1)
        assert data is not None and data["running"], data
        [running] = data["running"]
        assert running["step"] == "process" and running["attempt"] == 1 and running["title"]
        assert running["tokens"] == 109 and running["cost"] == pytest.approx(STEP_COST)
        assert data["sessions"] == {"in_use": 1, "cap": 1}
        [queued] = data["queued"]
        assert queued["issue_id"] != running["issue_id"]
        text = render_text(render_status(data))
        assert "RUNNING (1)" in text and "QUEUED (1)" in text and "1/1" in text
        assert "waiting for a session" in text or "check-deps" in text
    finally:
        hold.write_text("go")
        thread.join(120)
    assert result.get("rc") == 0
    data = collect_status(svc)
    assert data["running"] == [] and data["queued"] == [] and len(data["recent"]) == 2


# --- logs ----------------------------------------------------------------------------------------------
def test_logs_interleave_step_events_and_agent_events_by_time(recorded):
    lines = cli(recorded, "logs", "t-ok").splitlines()
    assert lines[0].startswith("run run-") and "Add the greeting" in lines[0]
    text = "\n".join(lines)

    def at(fragment: str) -> int:
        return next(i for i, line in enumerate(lines) if fragment in line)

    starting = at("session starting")
    write = at("agent#1    tool write")
    finish = at("step finished (stop): 110 tokens")
    finished = at("session finished")
    assert starting < at("agent#1    text: Writing the file.") < write < finish < finished
    assert "completed" in lines[write]
    assert "cost $0.1250" in lines[finish]
    assert at("check-deps step started") < starting and finished < at("commit     step succeeded")
    assert "step=None" not in text


def test_logs_of_a_failed_run_show_every_session_and_the_reason(recorded):
    svc = services(recorded)
    lines = list(stream_logs(svc, "t-fail"))
    text = "\n".join(lines)
    for n in (1, 2, 3):
        assert f"agent#{n}" in text
    assert "step failed, will retry" in text and "run failed" in text
    assert "without changing any file" in text
    # follow stops by itself once the run is over
    assert list(stream_logs(svc, "t-fail", follow=True, poll=0.05)) == lines


def test_logs_json_gives_raw_events_one_per_line(recorded):
    out = cli(recorded, "logs", "--json", "t-ok")
    events = [json.loads(line) for line in out.splitlines()]
    engine = [e for e in events if e.get("source") == "engine"]
    agent = [e for e in events if "type" in e]
    assert {e["event"] for e in engine} >= {"run submitted", "step started", "session starting", "run succeeded"}
    assert all(e["run_id"].startswith("run-") for e in engine)
    assert [e["type"] for e in agent] == ["step_start", "text", "tool_use", "step_finish", "step_start", "text",
                                          "step_finish"]
    assert agent[3]["part"]["tokens"]["total"] == 109 and agent[3]["part"]["cost"] == STEP_COST


def test_logs_accept_a_run_id_and_its_short_form(recorded):
    svc = services(recorded)
    run_id = collect_status(svc)["recent"][0]["run_id"]
    full = list(stream_logs(svc, run_id))
    assert full == list(stream_logs(svc, run_id.rsplit("-", 1)[1]))
    result = CliRunner().invoke(main, ["--repo", str(recorded), "logs", "no-such-run"])
    assert result.exit_code == 2 and "no run found" in result.output


# --- review --------------------------------------------------------------------------------------------
def test_review_lists_landed_commits_with_gates_attempts_tokens_cost_and_diff(recorded):
    data = json.loads(cli(recorded, "review", "--json"))
    assert data["target"] == "main" and data["history"] is None
    [commit] = data["commits"]
    sha = git(recorded, "rev-parse", "main")
    assert commit["sha"] == sha and commit["issue_id"] == "t-ok" and commit["title"] == "Add the greeting"
    assert commit["attempts"] == 1 and commit["tokens"] == SESSION_TOKENS
    assert commit["cost"] == pytest.approx(2 * STEP_COST) and commit["duration_s"] > 0
    assert commit["diff_command"] == f"git show {sha[:10]}"
    assert commit["run_id"].startswith("run-") and commit["agent"]
    out = cli(recorded, "review")
    assert f"git show {sha[:10]}" in out and "Add the greeting" in out and "1 attempt(s)" in out
    assert "219 tokens" in out and "$0.2500" in out
    assert json.loads(cli(recorded, "review", "--json", "--since", "2099-01-01"))["commits"] == []
    assert len(json.loads(cli(recorded, "review", "--json", "--since", "2000-01-01"))["commits"]) == 1


def test_review_of_one_issue_gives_its_whole_history(recorded):
    svc = services(recorded)
    failed = review_data(svc, "t-fail")
    assert failed["commits"] == []
    [run] = failed["history"]
    assert run["status"] == "failed" and run["failed_step"] == "process" and run["commit"] is None
    tries = [a for a in run["attempts"] if a["step"] == "process"]
    assert [a["status"] for a in tries] == ["failed"] * 3
    assert all("without changing any file" in a["error"] for a in tries)
    assert run["tokens"] == 3 * SESSION_TOKENS
    out = cli(recorded, "review", "t-fail")
    assert "no landed commits on main for t-fail" in out and "HISTORY of t-fail" in out
    assert out.count("process    try") == 3

    landed = review_data(svc, "t-ok")
    [commit] = landed["commits"]
    [run] = landed["history"]
    assert run["commit"] == commit["sha"] and run["phase"] == "landed"
    assert [a["step"] for a in run["attempts"]] == ["check-deps", "process", "verify", "commit"]


def test_watch_redraws_until_ctrl_c_and_returns_cleanly(recorded, monkeypatch):
    import io

    from rich.console import Console

    import beads_runner.status as status_mod

    # No clock is patched: the watch redraws with no pause (interval 0), and Ctrl-C arrives while
    # the third status is being collected: the first draw and two redraws went out.
    calls = {"n": 0}
    real = status_mod.collect_status

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(status_mod, "collect_status", counting)
    buf = io.StringIO()
    status_mod.watch_status(services(recorded), interval=0,
                            console=Console(file=buf, width=160, force_terminal=False))
    assert calls["n"] == 3
    assert "sessions in use: 0/3" in buf.getvalue()
