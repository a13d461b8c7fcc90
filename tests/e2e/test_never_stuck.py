"""Never stuck, never silent, as a user meets it: a provider whose quota is spent for longer than
the stall timeout, `explain`, `cancel` and `retry`, and a webhook receiver, with real git, the real
opencode binary, the scripted model and the bd stand-in as real subprocesses.

Durations are scaled down (the outage is seconds, not minutes) with their ratios kept: the outage
outlasts agent.stall_timeout, so a runner that waited inside the session would kill and burn tries.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.e2e.conftest import (BEADS_RUNNER, create_issue, git, issue, recorded_engine, run_cli, sample_repo,
                                writes)
from tests.fakes.bd_standin import bd_json, run_bd

OUTAGE_S = 60.0  # the provider answers 429 insufficient_quota this long ...
STALL = "45s"  # ... longer than the stall timeout (which must outlast opencode's start on a busy machine)
QUOTA = {"status": 429, "message": "You exceeded your current quota, please check your plan and billing details.",
         "type": "insufficient_quota", "code": "insufficient_quota", "seconds": OUTAGE_S}


def configure(repo: Path, agent: str = "", extra: str = "") -> None:
    """Replace the sample repository's [agent] table (and add `extra`), committed."""
    path = repo / ".beads-runner.toml"
    text = path.read_text()
    start = text.index("[agent]")
    end = text.index("[engine]")
    path.write_text(text[:start] + textwrap.dedent("""\
        [agent]
        model = "scripted/scripted"
        timeout = "4m"
        """) + textwrap.dedent(agent) + "\n" + text[end:] + textwrap.dedent(extra))
    git(repo, "commit", "-q", "-am", "config")


class Receiver:
    """A webhook receiver on 127.0.0.1 recording every event POSTed to it."""

    def __init__(self):
        self.events: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.events += body["events"]
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def names(self, issue_id: str | None = None) -> list[str]:
        return [e["event"] for e in self.events if issue_id is None or e.get("issue_id") == issue_id]


def explain(repo: Path, env: dict, issue_id: str) -> dict:
    result = run_cli(repo, env, "explain", issue_id, "--json", timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_a_quota_outage_longer_than_the_stall_timeout_parks_then_both_issues_land(tmp_path, runner_env):
    repo = sample_repo(tmp_path / "repo")
    receiver = Receiver()
    configure(repo, agent=f"""\
        stall_timeout = "{STALL}"
        park_backoff = "4s"
        park_max = "15s"
        limit_check_interval = "0.5s"
        """, extra=f"""
        [[notify]]
        url = "{receiver.url}"
        backoff = "0.2s"
        """)
    a = create_issue(repo, "Add alpha")
    b = create_issue(repo, "Add beta")
    script = {"outage": QUOTA, "scenarios": [
        {"match": f"Issue {a} ", "rounds": writes(("pkg/alpha.py", "ALPHA = 1\n"), summary="Added alpha.")},
        {"match": f"Issue {b} ", "rounds": writes(("pkg/beta.py", "BETA = 2\n"), summary="Added beta.")},
    ]}
    env, server = runner_env(script)
    runner = subprocess.Popen([str(BEADS_RUNNER), "--repo", str(repo), "start", "--once"], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen_parked = None
    deadline = time.monotonic() + 120
    while runner.poll() is None and seen_parked is None and time.monotonic() < deadline:
        why = explain(repo, env, a)
        if why["code"] == "parked":
            seen_parked = why
        time.sleep(1)
    out, _ = runner.communicate(timeout=400)

    assert runner.returncode == 0, out[-4000:]
    assert seen_parked is not None, out[-4000:]
    assert "quota" in seen_parked["why"] and seen_parked["until"]
    assert seen_parked["park"]["scope"] == "provider:scripted"
    for issue_id in (a, b):
        shown = issue(repo, issue_id)
        assert shown["status"] == "closed", shown
        assert "needs-human" not in (shown.get("labels") or [])
        assert explain(repo, env, issue_id)["code"] == "landed"
    engine = recorded_engine(repo)
    attempts = engine.tries("process")
    assert [(t["attempt"], t["status"]) for t in attempts] == [(1, "succeeded")] * 2, attempts  # no try spent
    events = engine.events_since(0, limit=100000)
    starts = [e["ts"] for e in events if e["event"] == "step started" and e["step"] == "process"]
    parked = sum(1 for e in events if e["event"] == "step parked")
    parks = [e for e in events if e["event"] == "provider limit: parked"]
    assert parks and parked >= 1 and len(starts) == parked + 2
    # Not hammered: no session started while the provider was parked ...
    for park in parks:
        started_inside = [t for t in starts if park["ts"] < t < park["until"] - 0.2]
        assert not started_inside, (park, starts)
    # ... and each parked session asked the provider once or twice before it was stopped.
    refused = [answer for answer in server.answers if answer["status"] == 429]
    assert 1 <= len(refused) <= 2 * parked, (len(refused), parked)
    assert server.answers[-1]["status"] == 200
    names = receiver.names()
    assert names[0] == "runner_started" and names[-1] == "runner_stopped"
    assert "parked" in names and "resumed" in names and names.count("landed") == 2
    assert "handed_to_person" not in names


def test_explain_says_why_for_blocked_epic_someone_elses_and_handed_over_issues(tmp_path, runner_env):
    repo = sample_repo(tmp_path / "repo")
    env, _ = runner_env({"scenarios": []})
    base = create_issue(repo, "Base work")
    blocked = create_issue(repo, "Needs the base", "--deps", base)
    epic = create_issue(repo, "A big theme", "-t", "epic")
    theirs = create_issue(repo, "Carol's")
    run_bd(repo, "update", theirs, "--claim", actor="carol")
    handed = create_issue(repo, "Went wrong")
    run_bd(repo, "update", handed, "--status", "blocked", "--add-label", "needs-human")

    why = explain(repo, env, blocked)
    assert why["code"] == "blocked_by" and [b["id"] for b in why["blockers"]] == [base]
    assert explain(repo, env, epic)["code"] == "not_work"
    why = explain(repo, env, theirs)
    assert why["code"] == "claimed_by_other" and why["assignee"] == "carol" and why["since"]
    why = explain(repo, env, handed)
    assert why["code"] == "with_person" and "retry" in why["change"]
    assert explain(repo, env, base)["code"] == "ready"
    text = run_cli(repo, env, "explain", theirs, timeout=60).stdout
    assert "claimed by carol since" in text and "what would change it" in text
    status = json.loads(run_cli(repo, env, "status", "--json", timeout=60).stdout)
    assert status["parked"] == []


def test_cancel_stops_a_hanging_session_then_retry_lands_it_and_a_receiver_hears_of_both(tmp_path, runner_env):
    repo = sample_repo(tmp_path / "repo")
    receiver = Receiver()
    configure(repo, agent="""\
        stall_timeout = "2m"
        limit_check_interval = "0.5s"
        """, extra=f"""
        [[notify]]
        url = "{receiver.url}"
        events = ["landed", "handed_to_person"]
        backoff = "0.2s"
        """)
    target = create_issue(repo, "Add gamma")
    script = {"scenarios": [
        {"match": "This is a retry", "rounds": writes(("pkg/gamma.py", "GAMMA = 3\n"), summary="Added gamma.")},
        {"match": f"Issue {target} ", "hang": True},  # the first run's model never answers
    ]}
    env, server = runner_env(script)
    runner = subprocess.Popen([str(BEADS_RUNNER), "--repo", str(repo), "start", "--once"], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while server.stats()["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.stats()["in_flight"] == 1
    assert explain(repo, env, target)["code"] == "running"

    cancelled = run_cli(repo, {**env, "BEADS_RUNNER_PERSON": "alice"}, "cancel", target, timeout=120)
    out, _ = runner.communicate(timeout=120)

    assert cancelled.returncode == 0, cancelled.stderr[-2000:]
    assert "cancelled by alice" in cancelled.stdout
    assert runner.returncode == 1, out[-3000:]
    worktree = repo / ".beads-runner" / "worktrees" / target
    assert worktree.is_dir()  # kept
    assert not _processes_in(worktree)  # the session's process group is gone
    shown = issue(repo, target)
    assert shown["status"] == "blocked" and "needs-human" in shown["labels"]
    comments = [c["text"] for c in bd_json(repo, "comments", target)]
    assert any("cancelled by alice" in text for text in comments)
    why = explain(repo, env, target)
    assert why["code"] == "with_person" and "cancelled by alice" in why["summary"]

    retried = run_cli(repo, {**env, "BEADS_RUNNER_PERSON": "bob"}, "retry", target, timeout=60)
    assert retried.returncode == 0, retried.stderr[-2000:]
    assert "needs-human" not in (issue(repo, target).get("labels") or [])
    result = run_cli(repo, env, "start", "--once")

    assert result.returncode == 0, result.stderr[-3000:]
    assert issue(repo, target)["status"] == "closed"
    assert git(repo, "show", "main:pkg/gamma.py") == "GAMMA = 3\n"
    retry_prompt = next(body for body in server.request_log if "This is a retry" in json.dumps(body))
    assert "cancelled by alice" in json.dumps(retry_prompt)  # the session is told why the last run failed
    handed = [e for e in receiver.events if e["event"] == "handed_to_person"]
    assert handed and handed[0]["issue_id"] == target and "cancelled by alice" in handed[0]["reason"]
    landed = [e for e in receiver.events if e["event"] == "landed"]
    assert landed and landed[0]["commit"] and landed[0]["title"] == "Add gamma"
    assert set(receiver.names()) == {"handed_to_person", "landed"}  # the filter holds


def _processes_in(directory: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(directory) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_server_mode_sees_a_spent_quota_in_its_retry_events_and_stops_at_once(tmp_path, runner_env):
    """agent.mode = "server": opencode's retry status carries the provider's words; the first one that
    is a spent quota ends the session, reported as a limit (the run is parked, not failed)."""
    from beads_runner.agent import make_agent
    from beads_runner.agent.base import SessionRequest
    from beads_runner.config import AgentConfig

    env, server = runner_env({"outage": {**QUOTA, "seconds": 600}, "scenarios": []})
    repo = tmp_path / "wt"
    repo.mkdir()
    git(repo, "init", "-q")
    agent = make_agent(AgentConfig(mode="server", model="scripted/scripted", timeout=120, stall_timeout=90,
                                   env={k: v for k, v in env.items() if k.startswith(("OPENCODE", "XDG"))}), tmp_path)
    try:
        result = agent.run(SessionRequest(issue_id="tt-q", prompt="Issue tt-q", workdir=repo, title="q"))
    finally:
        agent.close()
    assert result.limit is not None and result.limit["kind"] == "quota", result.reason
    assert not result.ok and result.retryable and not result.stalled
    assert 1 <= sum(1 for a in server.answers if a["status"] == 429) <= 2  # asked once or twice, then stopped
