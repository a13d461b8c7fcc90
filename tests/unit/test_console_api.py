"""The console's JSON API, pages and security, on real runs: the daemon with the `command` agent and
the jsonl tracker lands one issue and hands another to a person; the console (Starlette's
TestClient, in process) then reads and acts on that repository's state."""

from __future__ import annotations

import html
import re
import stat
import textwrap
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from beads_runner.config import load_config
from beads_runner.console.app import build_app
from beads_runner.console.metrics import prometheus
from beads_runner.daemon import Runner
from beads_runner.services import Services, register_services
from beads_runner.tracker.jsonl import JsonlTracker
from tests.helpers import command_agent_repo, new_repo

# Lands t-ok; changes nothing for t-bad unless the prompt says it is a retry.
AGENT = textwrap.dedent("""\
    import os, sys
    prompt = sys.stdin.read()
    issue = os.environ["BEADS_ISSUE_ID"]
    if issue == "t-bad" and "This is a retry" not in prompt:
        print("nothing to do")
        sys.exit(0)
    with open(f"work-{issue}.txt", "w") as fh:
        fh.write("done")
    print(f"wrote work-{issue}.txt")
""")
LOOPBACK = "http://127.0.0.1:8765"


def _landed_and_handed_over(tmp: Path) -> Path:
    """A repository where t-ok landed and t-bad was handed to a person (three tries changed nothing)."""
    (tmp / "agent.py").write_text(AGENT)
    path = command_agent_repo(tmp / "repo", tmp / "agent.py")
    tracker = JsonlTracker(path)
    tracker.create("Good work", id="t-ok")
    tracker.create("Impossible work", id="t-bad")
    svc = register_services(Services(path, load_config(path)))
    assert Runner(svc).run(once=True, poll_interval=0.1) == 1  # t-bad failed
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return _landed_and_handed_over(tmp_path_factory.mktemp("console"))


def _svc(repo: Path) -> Services:
    return register_services(Services(repo, load_config(repo)))


@pytest.fixture
def client(repo) -> TestClient:
    return TestClient(build_app(_svc(repo)), base_url=LOOPBACK)


def _token(repo: Path) -> str:
    return (repo / ".beads-runner" / "ui.token").read_text().strip()


def test_runs_list_names_both_runs_newest_first_with_their_phase(client):
    body = client.get("/api/runs").json()
    by_issue = {r["issue_id"]: r for r in body["runs"]}
    assert set(by_issue) == {"t-ok", "t-bad"}
    assert by_issue["t-ok"]["phase"] == "landed" and by_issue["t-ok"]["commit"]
    assert by_issue["t-bad"]["status"] == "failed" and by_issue["t-bad"]["failed_step"] == "process"
    assert by_issue["t-ok"]["title"] == "Good work"
    created = [r["created_at"] for r in body["runs"]]
    assert created == sorted(created, reverse=True)
    assert client.get("/api/runs?group=failed").json()["runs"][0]["issue_id"] == "t-bad"
    assert [r["issue_id"] for r in client.get("/api/runs?issue=t-ok").json()["runs"]] == ["t-ok"]


def test_older_runs_are_paged_with_the_before_cursor_in_the_api_and_on_the_page(client):
    newest = client.get("/api/runs").json()["runs"]
    first = client.get("/api/runs?limit=1").json()
    assert [r["run_id"] for r in first["runs"]] == [newest[0]["run_id"]]
    assert first["older"] == newest[0]["created_at"]
    second = client.get("/api/runs", params={"limit": 1, "before": repr(first["older"])}).json()
    assert [r["run_id"] for r in second["runs"]] == [newest[1]["run_id"]]
    assert second["older"] is None  # the last page
    assert client.get("/api/runs", params={"before": repr(newest[-1]["created_at"])}).json()["runs"] == []

    page = client.get("/runs?limit=1").text
    link = re.search(r'<a rel="next" class="older" href="([^"]+)"', page)
    assert link and newest[0]["run"] in page and newest[1]["run"] not in page
    older = client.get(html.unescape(link.group(1))).text
    assert newest[1]["run"] in older and newest[0]["run"] not in older and 'rel="next"' not in older


def test_bad_list_parameters_are_refused_with_the_fix(client):
    assert client.get("/api/runs?limit=x").status_code == 400
    answer = client.get("/api/runs?before=yesterday")
    assert answer.status_code == 400 and "older" in answer.json()["fix"]
    assert client.get("/runs?before=yesterday").status_code == 400
    answer = client.get("/api/runs?group=nonsense")
    assert answer.status_code == 400 and "unknown group" in answer.json()["error"]
    assert client.get("/api/runs?issue=../etc").status_code == 400


def test_a_run_has_its_four_steps_tries_events_commit_and_close_reason(client, repo):
    run_id = client.get("/api/runs?issue=t-ok").json()["runs"][0]["run_id"]
    run = client.get(f"/api/runs/{run_id}").json()
    assert [s["name"] for s in run["steps"]] == ["check-deps", "process", "verify", "commit"]
    assert all(s["status"] == "succeeded" for s in run["steps"])
    assert {a["step"] for a in run["attempts"]} == {"check-deps", "process", "verify", "commit"}
    assert any(e["event"] for e in run["events"])
    assert run["close_reason"].startswith(f"Landed {run['commit'][:8]}")
    assert "work-t-ok.txt" in run["diff"]["text"]
    assert run["dashboard_url"] is None  # the embedded engine has no dashboard of its own
    # the agent's output is the transcript
    assert any("wrote work-t-ok.txt" in e["text"] for s in run["transcript"] for e in s["events"])
    assert client.get("/api/runs/run-nothing-like-this").status_code == 404
    assert client.get("/api/runs/..%2f..%2fetc").status_code in (400, 404)


def test_the_failed_run_shows_every_try_and_its_error(client):
    run_id = client.get("/api/runs?issue=t-bad").json()["runs"][0]["run_id"]
    run = client.get(f"/api/runs/{run_id}").json()
    tries = [a for a in run["attempts"] if a["step"] == "process"]
    assert [a["attempt"] for a in tries] == [1, 2, 3]
    assert all(a["status"] == "failed" and "without changing any file" in a["error"] for a in tries)
    assert [s["status"] for s in run["steps"]][:2] == ["succeeded", "failed"]


def test_an_issue_is_explained_with_all_its_runs(client):
    body = client.get("/api/issues/t-bad").json()
    assert body["explain"]["code"] == "with_person"
    assert len(body["runs"]) == 1
    assert client.get("/api/issues/t-unknown").status_code == 404
    assert client.get("/api/issues/bad%20id").status_code == 400


def test_posts_need_the_token_and_a_wrong_one_is_refused(client, repo):
    for path, body in (("/api/issues/t-bad/retry", {}), ("/api/issues/t-bad/cancel", {}),
                       ("/api/submit", {"issue_id": "t-ok"})):
        assert client.post(path, json=body).status_code == 401
        assert client.post(path, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    token_file = repo / ".beads-runner" / "ui.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # still handed over: nothing was done
    assert client.get("/api/issues/t-bad").json()["explain"]["code"] == "with_person"


def test_the_token_is_never_shown(client, repo):
    token = _token(repo)
    for path in ("/", "/runs", "/charts", "/api/runs", "/metrics", "/issues/t-bad"):
        assert token not in client.get(path).text


def test_a_loopback_console_refuses_other_host_names(repo):
    other = TestClient(build_app(_svc(repo)), base_url="http://evil.example:8765")
    assert other.get("/api/runs").status_code == 421


def test_bound_elsewhere_every_request_needs_the_token(repo):
    app = build_app(_svc(repo), host="0.0.0.0")
    c = TestClient(app, base_url="http://10.0.0.5:8765")
    assert c.get("/api/runs").status_code == 401
    assert c.get("/").status_code == 401
    assert c.get("/api/runs", headers={"Authorization": f"Bearer {_token(repo)}"}).status_code == 200
    # a browser: ?token= once sets the cookie, then pages load without it
    first = c.get(f"/?token={_token(repo)}", follow_redirects=False)
    assert first.status_code == 303 and "token" not in first.headers["location"]
    assert c.get("/").status_code == 200
    # ...but a cookie alone never changes anything
    assert c.post("/api/issues/t-bad/cancel", json={}).status_code == 401


def test_cancel_of_an_issue_with_no_run_in_flight_is_refused_with_the_clis_error(client, repo):
    answer = client.post("/api/issues/t-ok/cancel", json={},
                         headers={"Authorization": f"Bearer {_token(repo)}"})
    assert answer.status_code == 409
    assert "has no run in flight" in answer.json()["error"] and answer.json()["fix"]


def test_submit_of_an_unknown_issue_is_refused(client, repo):
    auth = {"Authorization": f"Bearer {_token(repo)}"}
    assert client.post("/api/submit", json={"issue_id": "t-nope"}, headers=auth).status_code == 409
    assert client.post("/api/submit", json={}, headers=auth).status_code == 400
    assert client.post("/api/submit", content=b"not json", headers=auth).status_code == 400


def test_pages_render_the_runs_and_a_partial_is_only_the_live_part(client):
    now = client.get("/")
    assert now.status_code == 200 and 'data-issue="t-bad"' in now.text and "<html" in now.text
    part = client.get("/?partial=1")
    assert "<html" not in part.text and 'data-issue="t-bad"' in part.text
    run_id = client.get("/api/runs?issue=t-ok").json()["runs"][0]["run_id"]
    page = client.get(f"/runs/{run_id}")
    for step in ("check-deps", "process", "verify", "commit"):
        assert f'data-step="{step}" data-status="succeeded"' in page.text
    assert client.get("/runs").status_code == 200
    assert "with_person" in client.get("/issues/t-bad").text
    assert "<svg" in client.get("/charts").text


def test_metrics_count_the_landing_and_the_handover_in_prometheus_format(client):
    m = client.get("/api/metrics").json()
    assert m["totals"]["landed"] == 1 and m["totals"]["handed_over"] == 1
    assert m["success_rate"] == 0.5
    assert m["days"][-1]["landed"] == 1 and m["days"][-1]["handed_over"] == 1
    assert set(m["step_durations"]) >= {"check-deps", "process", "verify", "commit"}
    text = client.get("/metrics").text
    assert "# TYPE beads_runner_sessions_in_use gauge" in text
    assert "beads_runner_runs_landed 1\n" in text and "beads_runner_success_ratio 0.5\n" in text
    assert 'beads_runner_step_duration_seconds{step="process",quantile="0.5"}' in text
    assert text == prometheus(m)


def test_events_stream_sends_the_engine_events_after_a_given_id(client):
    with client.stream("GET", "/api/events?after=0") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = []
        for line in stream.iter_lines():
            lines.append(line)
            if line.startswith("event: state"):
                break
    assert "event: engine" in lines
    first = next(n for n, line in enumerate(lines) if line == "event: engine")
    assert lines[first - 1] == "id: 1"


def test_retry_through_the_api_is_the_clis_retry_and_the_issue_lands(tmp_path):
    repo = _landed_and_handed_over(tmp_path)
    client = TestClient(build_app(_svc(repo)), base_url=LOOPBACK)
    answer = client.post("/api/issues/t-bad/retry", json={"by": "tester"},
                         headers={"Authorization": f"Bearer {_token(repo)}"})
    assert answer.status_code == 200, answer.text
    new_run = answer.json()["run_id"]
    issue = JsonlTracker(repo).show("t-bad")
    assert issue.status == "open" and "needs-human" not in issue.labels
    assert any("tester asked beads-runner to retry" in c["text"] for c in JsonlTracker(repo).comments("t-bad"))
    assert Runner(_svc(repo)).run(once=True, poll_interval=0.1) == 0
    assert client.get(f"/api/runs/{new_run}").json()["phase"] == "landed"
    assert client.get("/api/issues/t-bad").json()["explain"]["code"] == "landed"


def test_hatchet_engine_links_a_run_to_its_dashboard():
    from types import SimpleNamespace

    from workflows.hatchet import HatchetEngine

    engine = HatchetEngine.__new__(HatchetEngine)
    engine.hatchet = SimpleNamespace(config=SimpleNamespace(server_url="http://localhost:8888/"))
    run_id = "0b3c1d2e-1111-4222-8333-444455556666"
    assert engine.dashboard_url(run_id) == f"http://localhost:8888/runs/{run_id}"


def test_ui_command_refuses_a_bad_port(repo):
    from click.testing import CliRunner

    from beads_runner.cli import main

    result = CliRunner().invoke(main, ["--repo", str(repo), "ui", "--port", "70000"])
    assert result.exit_code == 2 and "is not a TCP port" in result.output


def test_a_repository_with_no_run_yet_shows_empty_pages(tmp_path):
    repo = tmp_path / "fresh"
    new_repo(repo)
    (repo / ".beads-runner.toml").write_text('[tracker]\nkind = "jsonl"\n[agent]\nkind = "command"\ncommand = "true"\n')
    (repo / ".beads").mkdir()
    (repo / ".beads" / "issues.jsonl").write_text("")
    c = TestClient(build_app(_svc(repo)), base_url=LOOPBACK)
    assert c.get("/api/runs").json()["runs"] == []
    assert "nothing running" in c.get("/").text
    assert c.get("/api/metrics").json()["success_rate"] is None
    assert not (repo / ".beads-runner" / "state.db").exists()  # reading made no engine state


def test_the_agents_transcript_has_its_messages_tool_calls_and_step_finishes(tmp_path):
    import json

    from beads_runner.console.data import transcript

    events = [
        {"type": "text", "timestamp": 1, "part": {"text": "Writing the file."}},
        {"type": "tool_use", "timestamp": 2, "part": {"tool": "write", "state": {"status": "completed",
                                                                                  "title": "pkg/a.py"}}},
        {"type": "step_finish", "timestamp": 3, "part": {"reason": "stop", "cost": 0.01,
                                                          "tokens": {"input": 10, "output": 5}}},
    ]
    (tmp_path / "agent-1.ndjson").write_text("\n".join(json.dumps(e) for e in events) + "\nnot json\n")
    [session] = transcript(tmp_path)
    kinds = [e["kind"] for e in session["events"]]
    assert kinds == ["text", "tool_use", "step_finish", "output"]
    texts = [e["text"] for e in session["events"]]
    assert texts[0] == "text: Writing the file."
    assert texts[1].startswith("tool write pkg/a.py completed")
    assert texts[2].startswith("step finished (stop):") and "in 10, out 5" in texts[2] and "$0.0100" in texts[2]


def test_with_a_hatchet_like_engine_every_run_links_to_its_dashboard(repo):
    from beads_runner.daemon import build_engine

    class Linked:
        """The embedded engine's answers, with a dashboard (as HatchetEngine has)."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def dashboard_url(self, run_id):
            return f"http://hatchet.local/runs/{run_id}"

    svc = _svc(repo)
    c = TestClient(build_app(svc, engine=Linked(build_engine(svc))), base_url=LOOPBACK)
    run = c.get("/api/runs?issue=t-ok").json()["runs"][0]
    assert run["dashboard_url"] == f"http://hatchet.local/runs/{run['run_id']}"
    page = c.get(f"/runs/{run['run_id']}").text
    assert f'href="http://hatchet.local/runs/{run["run_id"]}"' in page and "Hatchet's dashboard" in page


def test_inside_the_daemon_reads_stay_on_the_event_loop_and_the_charts_come_from_a_child(repo):
    """`start --ui` on the embedded engine: no worker thread for reads (its arena, stack and SQLite
    connection would stay in the daemon); actions still run off the loop."""
    import threading

    from beads_runner.daemon import build_engine

    class Watched:
        def __init__(self, inner):
            self.inner, self.threads = inner, set()

        def __getattr__(self, name):
            self.threads.add(threading.current_thread().name)
            return getattr(self.inner, name)

    svc = _svc(repo)
    engine = Watched(build_engine(svc))
    c = TestClient(build_app(svc, engine=engine), base_url=LOOPBACK)
    run_id = c.get("/api/runs").json()["runs"][0]["run_id"]
    for path in ("/", "/runs", f"/runs/{run_id}", "/issues/t-ok", "/api/now", "/charts"):
        assert c.get(path).status_code == 200, path
    assert engine.threads and not any(name.startswith("AnyIO worker") for name in engine.threads)
    assert "beads_runner_runs_landed 1" in c.get("/metrics").text.splitlines()
    metrics = c.get("/api/metrics").json()
    assert sum(d["landed"] for d in metrics["days"]) == 1 and sum(d["handed_over"] for d in metrics["days"]) == 1
    refused = c.post("/api/issues/t-ok/cancel", json={}, headers={"Authorization": f"Bearer {_token(repo)}"})
    assert refused.status_code == 409 and "no run in flight" in refused.json()["error"]


def test_piecewise_json_answers_what_json_dumps_answers():
    import json

    from beads_runner.console.api import PiecewiseJSON

    rows = [{"run_id": "r-1", "title": "é “quoted” \\ \n", "steps": [{"name": "process", "attempt": 2}],
             "reason": {"code": "landed"}, "cost": 0.25, "error": None}, {"run_id": "r-2", "ok": True}]
    page = {"runs": rows, "limit": 2, "group": "all", "before": None, "older": 1794929573.248591}
    assert json.loads(PiecewiseJSON(page).body) == page
    assert PiecewiseJSON({**page, "runs": (r for r in rows)}).body == PiecewiseJSON(page).body
    assert json.loads(PiecewiseJSON([]).body) == [] and json.loads(PiecewiseJSON({}).body) == {}
