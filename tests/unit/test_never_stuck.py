"""Never stuck, never silent: parks on provider limits, explain, retry, cancel, a failure handler that
gives up, trusted work and notifications, with the daemon, a real subprocess agent (the `command`
kind, so each case takes a second or two) and the jsonl tracker."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from beads_runner.actions import cancel_issue, resume, retry_issue
from beads_runner.cli import main
from beads_runner.config import load_config, validate_config
from beads_runner.daemon import Runner, build_engine
from beads_runner.errors import RunnerError, TrackerError
from beads_runner.explain import explain, trust_problem
from beads_runner.limits import QUOTA
from beads_runner.parking import Parking
from beads_runner.services import Services, register_services
from beads_runner.status import collect_status, render_status, render_text
from beads_runner.tracker.jsonl import JsonlTracker
from tests.helpers import git, new_repo

AGENT = textwrap.dedent("""\
    import json, os, pathlib, sys, time
    prompt = sys.stdin.read()
    issue = os.environ["BEADS_ISSUE_ID"]
    marks = pathlib.Path(os.environ["MARKS"])
    marks.mkdir(exist_ok=True)
    behaviour = json.loads((marks / "behaviour.json").read_text()).get(issue, "write")
    n = len(list(marks.glob(f"{issue}.prompt.*"))) + 1
    (marks / f"{issue}.prompt.{n}").write_text(prompt)
    (marks / f"{issue}.actor").write_text(os.environ.get("BD_ACTOR", ""))
    with open(marks / "sessions.log", "a") as fh:
        fh.write(json.dumps({"issue": issue, "t": time.time(), "pid": os.getpid()}) + "\\n")
    kind, _, arg = behaviour.partition(":")
    if kind == "quota_while" and pathlib.Path(arg).exists():
        print("Error: 429 You exceeded your current quota, please check your plan and billing details.",
              file=sys.stderr)
        sys.exit(1)
    if kind == "auth_while" and pathlib.Path(arg).exists():
        print("Error: 401 Incorrect API key provided", file=sys.stderr)
        sys.exit(1)
    if kind == "needs_a_retry" and "This is a retry" not in prompt:
        print("I could not do it.")
        sys.exit(0)
    if kind == "sleep":
        (marks / f"{issue}.pid").write_text(str(os.getpid()))
        for _ in range(600):
            print("working", flush=True)
            time.sleep(0.1)
    pathlib.Path(f"work-{issue}.txt").write_text(f"done in session {n}\\n")
    print(f"wrote work-{issue}.txt")
""")


class Rig:
    def __init__(self, tmp: Path, extra: str = ""):
        self.tmp = tmp
        self.repo = new_repo(tmp / "repo")
        self.marks = tmp / "marks"
        self.marks.mkdir()
        self.behaviour: dict[str, str] = {}
        (tmp / "agent.py").write_text(AGENT)
        (self.repo / ".gitignore").write_text(".beads-runner/\n")
        (self.repo / ".beads").mkdir()
        (self.repo / ".beads" / "issues.jsonl").write_text("")
        self.configure(extra)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", "init")
        self.tracker = JsonlTracker(self.repo)

    def reconfigure(self, extra: str) -> None:
        self.configure(extra)
        git(self.repo, "commit", "-q", "-am", "config")

    def configure(self, extra: str = "") -> None:
        (self.repo / ".beads-runner.toml").write_text(textwrap.dedent(f"""\
            [tracker]
            kind = "jsonl"
            [agent]
            kind = "command"
            command = "{sys.executable} {self.tmp / 'agent.py'}"
            env = {{ MARKS = "{self.marks}" }}
            park_backoff = "0.3s"
            park_max = "1s"
            [engine]
            handover_backoff = "0.05s"
            [engine.retry]
            backoff = "0.05s"
            """) + extra)

    def issue(self, issue_id: str, behaviour: str = "write", **fields) -> str:
        self.tracker.create(fields.pop("title", f"Task {issue_id}"), id=issue_id, **fields)
        self.behaviour[issue_id] = behaviour
        (self.marks / "behaviour.json").write_text(json.dumps(self.behaviour))
        return issue_id

    def services(self, tracker=None) -> Services:
        return register_services(Services(self.repo, load_config(self.repo), tracker_override=tracker))

    def run_once(self, tracker=None) -> int:
        return Runner(self.services(tracker)).run(once=True, poll_interval=0.1)

    def prompts(self, issue_id: str) -> list[str]:
        return [p.read_text() for p in sorted(self.marks.glob(f"{issue_id}.prompt.*"))]

    def landed(self, issue_id: str) -> bool:
        return bool(git(self.repo, "log", "main", "--format=%H", f"--grep=Beads-Issue: {issue_id}"))


@pytest.fixture
def rig(tmp_path) -> Rig:
    return Rig(tmp_path)


def process_attempts(svc: Services, issue_id: str) -> list[dict]:
    engine = build_engine(svc)
    return [a for run in engine.runs(key=issue_id) for a in engine.attempts(run.id) if a["step"] == "process"]


# --- provider limits park ----------------------------------------------------------------------------
def test_a_spent_quota_parks_both_issues_without_spending_attempts_then_they_land(rig):
    outage = rig.tmp / "outage"
    outage.write_text("")
    a = rig.issue("t-a", f"quota_while:{outage}")
    b = rig.issue("t-b", f"quota_while:{outage}")
    threading.Timer(2.5, outage.unlink).start()  # longer than a few parks (0.3 s doubling, 1 s at most)
    assert rig.run_once() == 0
    svc = rig.services()
    for issue_id in (a, b):
        assert rig.tracker.show(issue_id).status == "closed" and rig.landed(issue_id)
        attempts = process_attempts(svc, issue_id)
        assert {x["status"] for x in attempts} <= {"parked", "succeeded"}
        assert attempts[-1]["status"] == "succeeded" and attempts[-1]["attempt"] == 1  # no attempt spent
        assert not any("needs-human" in c["text"] for c in rig.tracker.comments(issue_id))
    sessions = [json.loads(line) for line in (rig.marks / "sessions.log").read_text().splitlines()]
    # Parked means no new session for the provider: a few tries over 2.5 s, not a retry loop.
    assert len(sessions) <= 2 * 8


def test_refused_credentials_park_until_resume_and_once_ends(rig):
    refused = rig.tmp / "refused"
    refused.write_text("")
    a = rig.issue("t-auth", f"auth_while:{refused}")
    assert rig.run_once() == 0  # nothing failed; nothing can move until a person acts
    svc = rig.services()
    why = explain(svc, a)
    assert why.code == "parked" and why.details["until"] is None and "resume" in why.change
    assert "Incorrect API key" in why.details["why"]
    data = collect_status(svc)
    assert data["parked"][0]["kind"] == "auth"
    assert [r["reason"]["code"] for r in data["queued"]] == ["parked"]
    text = render_text(render_status(data))
    assert "PARKED (provider:command) until `beads-runner resume`" in text and "parked" in text.split("QUEUED")[1]
    assert rig.tracker.show(a).status == "in_progress"  # still ours, not handed over
    refused.unlink()
    assert [p["scope"] for p in resume(svc)["resumed"]] == ["provider:command"]
    assert rig.run_once() == 0
    assert rig.tracker.show(a).status == "closed"


def test_once_waits_for_a_timed_park_when_work_is_ready(rig):
    waiting = rig.issue("t-later")
    Parking(rig.services().state_dir).park("provider:command", QUOTA, "You exceeded your current quota",
                                           reset_at=time.time() + 1.5, backoff=1, backoff_max=1)
    assert rig.run_once() == 0
    assert rig.landed(waiting)  # not an early exit: the park ended and the issue was claimed then


# --- the failure handler is bounded ------------------------------------------------------------------
class RefusingComments:
    """The jsonl tracker, except that it refuses every comment (a tracker that is down for writes)."""

    def __init__(self, inner: JsonlTracker):
        self.inner = inner
        self.refused = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def comment(self, issue_id, text):
        self.refused += 1
        raise TrackerError("refused: the tracker is read-only", fix="try later")


def test_a_failure_handler_the_tracker_refuses_gives_up_records_locally_and_once_ends(rig):
    stuck = rig.issue("t-stuck", "needs_a_retry")  # fails every try: the handler must run
    tracker = RefusingComments(rig.tracker)
    assert rig.run_once(tracker) == 1
    assert tracker.refused == 3  # engine.handover_attempts, not for ever
    svc = rig.services()
    why = explain(svc, stuck)
    assert why.code == "with_person" and why.details["recorded_locally"]
    assert "refused" in why.details["tracker_error"]
    [blocked] = collect_status(svc)["blocked"]
    assert blocked["handover_recorded_locally"] and blocked["reason"]["code"] == "with_person"
    # The next start does not take it back as a stale claim: it is a person's now, and the tracker,
    # listening again, gets the handover.
    assert rig.run_once() == 0
    assert len(rig.prompts(stuck)) == 3
    shown = rig.tracker.show(stuck)
    assert shown.status == "blocked" and "needs-human" in shown.labels
    assert any("failed at step process" in c["text"] for c in rig.tracker.comments(stuck))
    why = explain(svc, stuck)
    assert why.code == "with_person" and not why.details["recorded_locally"]


# --- retry and cancel -----------------------------------------------------------------------------------
def test_retry_lands_a_handed_over_issue_from_its_kept_branch(rig):
    hard = rig.issue("t-hard", "needs_a_retry")
    assert rig.run_once() == 1
    assert "needs-human" in rig.tracker.show(hard).labels
    svc = rig.services()
    with pytest.raises(RunnerError):
        retry_issue(svc, rig.issue("t-fine"), by="bob")  # not handed to a person
    done = retry_issue(svc, hard, by="alice")
    shown = rig.tracker.show(hard)
    assert shown.status == "open" and "needs-human" not in shown.labels
    assert any("alice asked beads-runner to retry" in c["text"] for c in rig.tracker.comments(hard))
    assert rig.run_once() == 0
    assert rig.landed(hard) and rig.tracker.show(hard).status == "closed"
    last = rig.prompts(hard)[-1]
    assert "This is a retry" in last and "without changing any file" in last and "asked for by alice" in last
    assert done["previous_reason"] and explain(svc, hard).code == "landed"


def test_retry_fresh_keeps_the_old_work_on_a_renamed_branch(rig):
    hard = rig.issue("t-fresh", "needs_a_retry")
    assert rig.run_once() == 1
    worktree = rig.repo / ".beads-runner" / "worktrees" / hard
    (worktree / "scratch.txt").write_text("a person's experiment\n")
    done = retry_issue(rig.services(), hard, fresh=True, by="alice")
    kept = done["kept_branch"]
    assert kept.startswith(f"beads-runner/{hard}-before-retry-")
    assert git(rig.repo, "show", f"{kept}:scratch.txt") == "a person's experiment"
    assert rig.run_once() == 0 and rig.landed(hard)
    assert "scratch.txt" not in git(rig.repo, "ls-tree", "--name-only", "main")  # fresh: from the target


def test_cancel_stops_the_session_keeps_the_branch_and_hands_the_issue_over(rig):
    slow = rig.issue("t-slow", "sleep")
    runner = Runner(rig.services())
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", runner.run(once=True, poll_interval=0.1)))
    thread.start()
    pid_file = rig.marks / f"{slow}.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    svc = register_services(Services(rig.repo, load_config(rig.repo)))
    done = cancel_issue(svc, slow, by="alice", wait=30)
    thread.join(60)
    assert done["done"] and done["status"] == "failed" and result["code"] == 1
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the session's process group is gone
    shown = rig.tracker.show(slow)
    assert shown.status == "blocked" and "needs-human" in shown.labels
    assert any("cancelled by alice" in c["text"] for c in rig.tracker.comments(slow))
    assert (rig.repo / ".beads-runner" / "worktrees" / slow).is_dir()  # the branch and its worktree kept
    assert rig.prompts(slow) and len(rig.prompts(slow)) == 1  # not retried
    why = explain(svc, slow)
    assert why.code == "with_person" and "cancelled by alice" in why.summary


def test_cancel_without_a_run_says_so(rig):
    rig.issue("t-idle")
    with pytest.raises(RunnerError) as err:
        cancel_issue(rig.services(), "t-idle", by="alice")
    assert "no run in flight" in err.value.message and err.value.fix


# --- explain ----------------------------------------------------------------------------------------------
def test_explain_names_the_one_reason(rig):
    blocker = rig.issue("t-base")
    rig.issue("t-blocked", deps=[blocker])
    rig.issue("t-epic", issue_type="epic")
    rig.issue("t-theirs")
    JsonlTracker(rig.repo, actor="carol").claim("t-theirs")
    svc = rig.services()
    codes = {i: explain(svc, i) for i in ("t-base", "t-blocked", "t-epic", "t-theirs")}
    assert codes["t-base"].code == "ready"
    assert codes["t-blocked"].code == "blocked_by" and "t-base" in codes["t-blocked"].summary
    assert codes["t-epic"].code == "not_work"
    assert codes["t-theirs"].code == "claimed_by_other" and codes["t-theirs"].details["assignee"] == "carol"
    assert codes["t-theirs"].details["since"]
    Parking(svc.state_dir).park(
        "provider:command", QUOTA, "You exceeded your current quota", reset_at=time.time() + 600, backoff=1,
        backoff_max=1)
    parked = explain(svc, "t-base")
    assert parked.code == "parked" and parked.details["until"] > time.time() and "quota" in parked.summary


def test_explain_on_the_command_line(rig):
    rig.issue("t-epic", issue_type="epic")
    cli = CliRunner()
    out = cli.invoke(main, ["--repo", str(rig.repo), "explain", "t-epic", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["code"] == "not_work" and data["issue_id"] == "t-epic" and data["change"]
    out = cli.invoke(main, ["--repo", str(rig.repo), "explain", "t-none"])
    assert out.exit_code == 2 and "error: no issue" in out.output and "fix:" in out.output


# --- only trusted work ---------------------------------------------------------------------------------
def test_only_trusted_work_is_claimed_when_asked(tmp_path):
    rig = Rig(tmp_path)
    text = (rig.repo / ".beads-runner.toml").read_text().replace(
        '[tracker]\nkind = "jsonl"\n', '[tracker]\nkind = "jsonl"\nrequire_labels = ["agent-ok"]\n'
                                       'trusted_creators = ["alice"]\n')
    (rig.repo / ".beads-runner.toml").write_text(text)
    git(rig.repo, "commit", "-q", "-am", "trust")
    (rig.marks / "behaviour.json").write_text("{}")
    alice = JsonlTracker(rig.repo, actor="alice")
    mallory = JsonlTracker(rig.repo, actor="mallory")
    alice.create("Labelled by alice", id="t-ok")
    alice.create("No label", id="t-nolabel")
    mallory.create("From a stranger", id="t-stranger")
    rig.tracker.create("Made by the runner's agent", id="t-agent")  # created by beads-runner itself
    JsonlTracker(rig.repo, actor="beads-runner-agent").create("Made by the agent, unlabelled", id="t-bare")
    for issue_id in ("t-ok", "t-stranger", "t-agent"):
        store = rig.repo / ".beads" / "issues.jsonl"
        lines = [json.loads(line) for line in store.read_text().splitlines()]
        for line in lines:
            if line["id"] == issue_id:
                line["labels"] = ["agent-ok"]
        store.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert rig.run_once() == 0
    assert rig.landed("t-ok") and rig.landed("t-agent")  # the runner's own issue, labelled by a person
    assert (rig.marks / "t-ok.actor").read_text() == "beads-runner-agent"  # what the agent files is its own
    for other in ("t-nolabel", "t-stranger", "t-bare"):
        assert rig.tracker.show(other).status == "open", other
    svc = rig.services()
    assert explain(svc, "t-nolabel").code == "untrusted"
    assert "trusted_creators" in explain(svc, "t-stranger").summary
    assert "agent-ok" in explain(svc, "t-bare").summary
    # Without require_labels nothing a person set can vouch for the runner's own issues.
    only_creators = validate_config({"tracker": {"trusted_creators": ["alice"]}}, "t").tracker
    bare = rig.tracker.show("t-bare")
    assert "runner or its agent" in trust_problem(bare, only_creators, "beads-runner")
    assert trust_problem(rig.tracker.show("t-nolabel"), only_creators, "beads-runner") is None


# --- notifications -------------------------------------------------------------------------------------
class Receiver:
    """A webhook receiver on 127.0.0.1 that records every POST; answers 500 to the first `fail` ones."""

    def __init__(self, fail: int = 0):
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.fail = fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.fail > 0:
                    receiver.fail -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.bodies.append(body)
                receiver.headers.append(dict(self.headers))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self) -> list[dict]:
        return [e for body in self.bodies for e in body.get("events", [])]

    def close(self):
        self.server.shutdown()


def test_a_webhook_receiver_gets_the_events(tmp_path):
    receiver = Receiver(fail=1)  # the first delivery fails: retried with backoff
    slack = Receiver()
    try:
        rig = Rig(tmp_path)
        rig.reconfigure(textwrap.dedent(f"""\
            [[notify]]
            url = "{receiver.url}"
            headers = {{ Authorization = "Bearer t0ken" }}
            backoff = "0.1s"
            [[notify]]
            url = "{slack.url}"
            format = "slack"
            events = ["landed"]
            """))
        rig.issue("t-good", title="Add the greeting")
        rig.issue("t-bad", "needs_a_retry")
        outage = rig.tmp / "outage"
        outage.write_text("")
        rig.issue("t-quota", f"quota_while:{outage}")
        threading.Timer(1.0, outage.unlink).start()
        assert rig.run_once() == 1
        events = receiver.events()
        names = [e["event"] for e in events]
        assert names[0] == "runner_started" and names[-1] == "runner_stopped"
        landed = [e for e in events if e["event"] == "landed"]
        assert {e["issue_id"] for e in landed} == {"t-good", "t-quota"}
        good = next(e for e in landed if e["issue_id"] == "t-good")
        assert good["title"] == "Add the greeting" and len(good["commit"]) == 40 and good["run_id"]
        assert good["time"] and good["at"].endswith("Z")
        [handed] = [e for e in events if e["event"] == "handed_to_person"]
        assert handed["issue_id"] == "t-bad" and "without changing any file" in handed["reason"]
        assert "parked" in names and "resumed" in names
        parked = next(e for e in events if e["event"] == "parked")
        assert parked["issue_id"] == "t-quota" and "quota" in parked["reason"]
        assert len(receiver.bodies) < len(events)  # batched
        assert receiver.headers[0]["Authorization"] == "Bearer t0ken"
        lines = "\n".join(body["text"] for body in slack.bodies)
        assert "t-good (Add the greeting) landed" in lines and "needs a person" not in lines
    finally:
        receiver.close()
        slack.close()


def test_a_dead_endpoint_never_delays_the_run(tmp_path):
    from beads_runner.config import NotifyConfig
    from beads_runner.notify import Notifier

    calls = []

    def sender(url, body, headers, timeout):
        calls.append(url)
        raise OSError("connection refused")

    notifier = Notifier([NotifyConfig(url="http://127.0.0.1:9/x", retries=2, backoff=0.01)], sender=sender,
                        queue_size=3).start()
    started = time.monotonic()
    for n in range(10):
        notifier.emit("landed", issue_id=f"t-{n}")
    assert time.monotonic() - started < 1.0  # emit only queues
    notifier.close(timeout=2)
    assert calls and notifier.delivered == 0 and notifier.failed + notifier.dropped >= 10 - 3


def test_a_spent_budget_parks_is_explained_notified_and_raised_by_resume(tmp_path):
    receiver = Receiver()
    try:
        rig = Rig(tmp_path)
        rig.reconfigure(textwrap.dedent(f"""\
            [[notify]]
            url = "{receiver.url}"
            """))
        text = (rig.repo / ".beads-runner.toml").read_text().replace("[agent]\n", "[agent]\ndaily_budget_usd = 0\n", 1)
        (rig.repo / ".beads-runner.toml").write_text(text)
        git(rig.repo, "commit", "-q", "-am", "budget")
        waiting = rig.issue("t-budget")
        assert rig.run_once() == 0  # nothing may be spent today: nothing starts, --once ends
        assert rig.tracker.show(waiting).status == "open"
        assert "budget_reached" in [e["event"] for e in receiver.events()]
        svc = rig.services()
        why = explain(svc, waiting)
        assert why.code == "parked" and why.details["kind"] == "budget" and "--raise-budget" in why.change
        data = collect_status(svc)
        assert [p["kind"] for p in data["parked"]] == ["budget"]
        assert "PARKED (budget)" in render_text(render_status(data))
        out = CliRunner().invoke(main, ["--repo", str(rig.repo), "resume", "--raise-budget", "5"])
        assert out.exit_code == 0 and "is now $5.00" in out.output
        assert explain(svc, waiting).code == "ready"
        assert rig.run_once() == 0 and rig.landed(waiting)
    finally:
        receiver.close()


def test_give_back_undoes_a_handover_in_bd_and_in_the_jsonl_file(tmp_path, monkeypatch):
    from beads_runner.tracker.bd import BdTracker
    from tests.fakes.bd_standin import create_issue, make_beads_repo, put_bd_on_path

    put_bd_on_path(monkeypatch)
    monkeypatch.delenv("BD_STANDIN_FAULTS", raising=False)
    repo = make_beads_repo(tmp_path / "bd")
    bd = BdTracker(repo, actor="runner", timeout=20, busy_backoff=0.01)
    jsonl_repo = new_repo(tmp_path / "jsonl")
    (jsonl_repo / ".beads").mkdir()
    jsonl = JsonlTracker(jsonl_repo)
    jsonl.init()
    ids = {"bd": create_issue(repo, "Went wrong", "-l", "keep"), "jsonl": jsonl.create("Went wrong", id="j-1").id}
    jsonl_raw = jsonl_repo / ".beads" / "issues.jsonl"
    labelled = jsonl_raw.read_text().replace('"title":"Went wrong"', '"title":"Went wrong","labels":["keep"]')
    jsonl_raw.write_text(labelled)
    for name, tracker in (("bd", bd), ("jsonl", jsonl)):
        issue_id = ids[name]
        tracker.claim(issue_id)
        tracker.hand_to_human(issue_id)
        tracker.give_back(issue_id)
        shown = tracker.show(issue_id)
        assert (shown.status, shown.assignee, shown.labels) == ("open", "", ["keep"]), name


def test_bad_requests_on_the_command_line_say_error_and_fix(rig):
    rig.issue("t-open")
    cli = CliRunner()
    for args, words in ((["retry", "t-open"], "was not handed to a person"),
                        (["cancel", "t-open"], "no run in flight"),
                        (["retry", "../etc"], "error:"),
                        (["resume", "--raise-budget", "-1"], "cannot be negative")):
        out = cli.invoke(main, ["--repo", str(rig.repo), *args])
        assert out.exit_code == 2, (args, out.output)
        assert words in out.output and "fix:" in out.output, (args, out.output)
    out = cli.invoke(main, ["--repo", str(rig.repo), "resume"])
    assert out.exit_code == 0 and "nothing was parked" in out.output
