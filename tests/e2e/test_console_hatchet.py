"""The console on a real Hatchet engine (`beads-runner hatchet up`, built by `make tools`) with a real
`beads-runner worker`: Submit through the API starts a run on Hatchet, the API and the pages show
it with its four steps and a link to Hatchet's dashboard, and it lands; Cancel stops a run in its
session and Retry runs the issue again, to landing."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from beads_runner.config import load_config
from beads_runner.console.app import build_app
from beads_runner.services import Services, register_services
from beads_runner.tracker.jsonl import JsonlTracker
from tests.e2e.hatchet_real import Workers, use_hatchet
from tests.helpers import git, new_repo

pytestmark = pytest.mark.e2e

AGENT = textwrap.dedent("""\
    import os, sys, time
    sys.stdin.read()
    issue = os.environ["BEADS_ISSUE_ID"]
    # h-stuck works only once `release` exists (the test creates it after cancelling the first run)
    while issue == "h-stuck" and not os.path.exists(os.path.join(os.path.dirname(__file__), "release")):
        time.sleep(0.2)
    open(f"work-{issue}.txt", "w").write("done")
    print(f"wrote work-{issue}.txt")
""")


def _repo(tmp: Path) -> Path:
    repo = new_repo(tmp / "repo")
    (tmp / "agent.py").write_text(AGENT)
    (repo / ".gitignore").write_text(".beads-runner/\n")
    (repo / ".beads-runner.toml").write_text(textwrap.dedent(f"""\
        sandbox = "off"
        [tracker]
        kind = "jsonl"
        [agent]
        kind = "command"
        command = "{sys.executable} {tmp / 'agent.py'}"
        """))
    (repo / ".beads").mkdir()
    (repo / ".beads" / "issues.jsonl").write_text("")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    return repo


def _settled(client: TestClient, run_id: str, timeout: float = 300.0) -> dict:
    """The run once Hatchet says it is over (the worker runs it; the engine's lists lag a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(f"/api/runs/{run_id}")
        if answer.status_code == 200 and answer.json()["status"] in ("succeeded", "failed", "cancelled"):
            return answer.json()
        assert time.monotonic() < deadline, f"run {run_id} not over in {timeout}s: {answer.text[:500]}"
        time.sleep(0.5)


def _step(client: TestClient, run_id: str, name: str) -> str | None:
    answer = client.get(f"/api/runs/{run_id}")
    if answer.status_code != 200:
        return None
    return next((s["status"] for s in answer.json()["steps"] if s["name"] == name), None)


def _until(condition, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not so in {timeout}s: {what}"
        time.sleep(0.5)


def _until_the_worker_registered(svc: Services, timeout: float = 180.0) -> None:
    """A run of a workflow the engine does not know yet is never picked up: wait for the worker's
    registration (what `start` checks before it submits anything)."""
    from workflows.hatchet import make_client, registered_version

    hatchet = make_client(svc)
    deadline = time.monotonic() + timeout
    while registered_version(hatchet) is None:
        assert time.monotonic() < deadline, "the worker did not register the workflow"
        time.sleep(0.5)


def test_submit_from_the_console_runs_on_hatchet_and_the_run_links_to_its_dashboard(
        tmp_path, hatchet_engine, monkeypatch):  # noqa: F811
    repo = _repo(tmp_path)
    use_hatchet(repo)
    JsonlTracker(repo).create("Work on Hatchet", id="h-1")
    env = hatchet_engine.env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for key, value in hatchet_engine.client.items():
        monkeypatch.setenv(key, value)
    workers = Workers(repo, env)
    workers.start("w1")
    try:
        svc = register_services(Services(repo, load_config(repo)))
        _until_the_worker_registered(svc)
        client = TestClient(build_app(svc), base_url="http://127.0.0.1:8765")
        token = (repo / ".beads-runner" / "ui.token").read_text().strip()
        answer = client.post("/api/submit", json={"issue_id": "h-1"}, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["engine"] == "hatchet" and answer.json()["created"] is True
        run_id = answer.json()["run_id"]

        run = _settled(client, run_id)
        assert run["status"] == "succeeded", (run, workers.log("w1")[-3000:])
        assert [s["name"] for s in run["steps"]] == ["check-deps", "process", "verify", "commit"]
        assert all(s["status"] == "succeeded" for s in run["steps"])
        server_url = hatchet_engine.client.get("HATCHET_CLIENT_SERVER_URL", "").rstrip("/")
        assert run["dashboard_url"] == f"{server_url}/runs/{run_id}"
        assert run["close_reason"] and run["close_reason"].startswith("Landed ")
        assert JsonlTracker(repo).show("h-1").status == "closed"
        page = client.get(f"/runs/{run_id}").text
        assert f'href="{server_url}/runs/{run_id}"' in page
        assert 'data-step="commit" data-status="succeeded"' in page
        assert 'data-engine="hatchet"' in page
        listed = client.get("/api/runs?issue=h-1").json()["runs"]
        assert [r["run_id"] for r in listed] == [run_id]
        assert client.get("/api/issues/h-1").json()["explain"]["code"] == "landed"
        assert "beads_runner_sessions_cap 3" in client.get("/metrics").text

        # Cancel a run in its session, then retry the issue: both through the console, on Hatchet.
        auth = {"Authorization": f"Bearer {token}"}
        JsonlTracker(repo).create("Work that waits", id="h-stuck")
        answer = client.post("/api/submit", json={"issue_id": "h-stuck"}, headers=auth)
        assert answer.status_code == 200, answer.text
        stuck = answer.json()["run_id"]
        _until(lambda: _step(client, stuck, "process") == "running", "the agent's session started")
        answer = client.post("/api/issues/h-stuck/cancel", json={}, headers=auth)
        assert answer.status_code == 200, answer.text
        assert answer.json()["run_id"] == stuck
        assert _settled(client, stuck)["status"] == "cancelled"
        assert 'data-action="retry" data-issue="h-stuck"' in client.get(f"/runs/{stuck}").text
        (tmp_path / "release").write_text("")
        answer = client.post("/api/issues/h-stuck/retry", json={}, headers=auth)
        assert answer.status_code == 200, answer.text
        again = answer.json()["run_id"]
        assert again != stuck and answer.json()["previous_run"] == stuck
        run = _settled(client, again)
        assert run["status"] == "succeeded", (run, workers.log("w1")[-3000:])
        assert JsonlTracker(repo).show("h-stuck").status == "closed"
    finally:
        workers.stop()
