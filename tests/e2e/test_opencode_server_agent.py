"""agent.mode = "server": the real `opencode serve` driven by OpenCodeServerAgent against
ScriptedModelServer, held to what tests/e2e/test_opencode_agent.py holds `opencode run` to, plus
what only the server shows (provider retries) and what only a long-lived server can suffer (dying
mid-session).

Each test gets its own opencode data/state/config directories and so its own server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from beads_runner.agent import make_agent
from beads_runner.agent.base import SessionRequest
from beads_runner.agent.opencode_server import OpenCodeServerAgent
from beads_runner.config import AgentConfig
from beads_runner.scripted_model import ScriptedModelServer
from tests.e2e.test_opencode_agent import OPENCODE, SCRIPT, _processes_with_env, _request, repo  # noqa: F401

pytestmark = pytest.mark.e2e

OUTSIDE = "/tmp/beads-runner-server-test-outside.txt"
SERVER_SCRIPT = {"scenarios": [
    *SCRIPT["scenarios"],
    {"match": "slow-6", "delay": 1.5, "rounds": [
        [{"text": "Writing", "tools": [{"name": "write", "args": {"filePath": "slow.txt", "content": "slow\n"}}]},
         {"text": "Wrote slow.txt."}],
        [{"text": "Done again."}]]},
    {"match": "outside-7", "rounds": [[
        {"text": "Writing outside", "tools": [{"name": "write", "args": {"filePath": OUTSIDE, "content": "x\n"}}]},
        {"text": "Tried."}]]},
]}


@pytest.fixture
def model():
    with ScriptedModelServer(SERVER_SCRIPT) as server:
        yield server


@pytest.fixture
def agents():
    made: list[OpenCodeServerAgent] = []
    yield made
    for agent in made:
        agent.close()


def _agent(scripted: ScriptedModelServer, tmp_path: Path, agents: list, **config) -> OpenCodeServerAgent:
    marker = tmp_path / "opencode-home"
    env = {
        **scripted.opencode_env(),
        "XDG_DATA_HOME": str(marker / "data"),
        "XDG_STATE_HOME": str(marker / "state"),
        "XDG_CONFIG_HOME": str(marker / "config"),
    }
    settings = {"model": "scripted/scripted", "timeout": 180, "stall_timeout": 90, "env": env, **config}
    agent = make_agent(AgentConfig(command=str(OPENCODE), mode="server", **settings), tmp_path)
    assert isinstance(agent, OpenCodeServerAgent)
    agents.append(agent)
    return agent


def _worktree(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def _opencode_pids(tmp_path: Path) -> list[int]:
    return _processes_with_env(str(tmp_path / "opencode-home"))


def test_session_writes_file_and_succeeds(model, repo, tmp_path, agents):  # noqa: F811
    agent = _agent(model, tmp_path, agents)
    events = []
    log = tmp_path / "logs" / "demo-1.ndjson"
    result = agent.run(_request(repo, "Work on issue demo-1: add hello.py", log_path=log), on_event=events.append)
    assert result.ok, result.output_tail
    assert (repo / "hello.py").read_text() == "print('hi')\n"
    assert result.exit_code == 0 and result.reason == ""
    assert result.session_id and result.session_id.startswith("ses_")
    assert result.tokens.total > 0 and result.tokens.input > 0 and result.tokens.output > 0
    assert result.summary == "Added hello.py."
    assert [e["type"] for e in events] == ["step_start", "text", "tool_use", "step_finish",
                                           "step_start", "text", "step_finish"]
    assert all(e["sessionID"] == result.session_id for e in events)
    assert result.events == len(events) == len(log.read_text().splitlines())
    assert result.provider_retries == []
    assert model.stats()["scenarios"] == {"demo-1": 2}


def test_sessions_share_one_server(model, tmp_path, agents):
    agent = _agent(model, tmp_path, agents)
    first = agent.run(SessionRequest(issue_id="para-0", prompt="Work on para-0", workdir=_worktree(tmp_path, "a")))
    server = agent.server()
    pid = server.pid
    second = agent.run(SessionRequest(issue_id="para-1", prompt="Work on para-1", workdir=_worktree(tmp_path, "b")))
    assert first.ok and second.ok, (first.output_tail, second.output_tail)
    assert server.pid == pid and server.generation == 1 and server.restarts == 0
    assert _opencode_pids(tmp_path) and all(_pgid(p) == pid for p in _opencode_pids(tmp_path))
    agent.close()
    assert _opencode_pids(tmp_path) == []


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_continued_session_gets_round_two(model, repo, tmp_path, agents):  # noqa: F811
    agent = _agent(model, tmp_path, agents)
    first = agent.run(_request(repo, "Work on issue demo-1: add hello.py"))
    assert first.ok, first.output_tail
    second = agent.run(_request(repo, "The gate failed: fix it", session_id=first.session_id))
    assert second.ok, second.output_tail
    assert second.session_id == first.session_id
    assert (repo / "round2.txt").read_text() == "round2\n"
    assert second.summary == "Fixed."


def test_unknown_session_is_reported_without_events(model, repo, tmp_path, agents):  # noqa: F811
    result = _agent(model, tmp_path, agents).run(_request(repo, "fix it", session_id="ses_doesnotexist"))
    assert not result.ok and result.retryable
    assert result.events == 0  # the fix loop then forgets the session and starts afresh
    assert "not found" in result.reason


def test_http_500_ends_not_ok_and_reports_provider_retries(model, repo, tmp_path, agents):  # noqa: F811
    agent = _agent(model, tmp_path, agents)
    seen = []
    result = agent.run(_request(repo, "Work on issue boom-2: explode"), on_event=seen.append)
    assert not result.ok
    assert result.reason.startswith("model API error (HTTP 500): scripted boom")
    assert result.retryable
    assert "APIError" in result.output_tail
    assert model.stats()["scenarios"]["boom"] == 6  # opencode tried once and retried 5 times
    assert [r.attempt for r in result.provider_retries] == [1, 2, 3, 4, 5]
    assert all("scripted boom" in r.message and r.next_at for r in result.provider_retries)
    live = [e for e in seen if e["type"] == "provider_retry"]
    assert [e["attempt"] for e in live] == [1, 2, 3, 4, 5]


def test_transient_errors_are_retried_by_opencode(model, repo, tmp_path, agents):  # noqa: F811
    result = _agent(model, tmp_path, agents).run(_request(repo, "Work on issue flaky-3"))
    assert result.ok, result.output_tail
    assert result.summary == "Recovered."
    assert model.stats()["scenarios"]["flaky"] == 3
    assert len(result.provider_retries) == 2


def test_stall_timeout_aborts_a_hanging_session_and_the_server_stays(model, repo, tmp_path, agents):  # noqa: F811
    agent = _agent(model, tmp_path, agents, stall_timeout=8)
    result = agent.run(_request(repo, "Work on issue silence-4"))
    assert result.stalled and not result.ok and result.retryable
    assert "no event from the opencode server for 8s" in result.reason
    assert "aborted" in result.output_tail
    server = agent.server()
    assert server.alive() and server.restarts == 0
    after = agent.run(SessionRequest(issue_id="para-2", prompt="Work on para-2", workdir=_worktree(tmp_path, "c")))
    assert after.ok, after.output_tail
    assert server.generation == 1


def test_wall_clock_limit_aborts_the_session(model, repo, tmp_path, agents):  # noqa: F811
    agent = _agent(model, tmp_path, agents, timeout=6, stall_timeout=60)
    result = agent.run(_request(repo, "Work on issue silence-8"))
    assert result.timed_out and not result.ok and result.retryable
    assert "agent.timeout (6s)" in result.reason


def test_three_concurrent_sessions(model, tmp_path, agents):
    agent = _agent(model, tmp_path, agents)  # no warm-up: the server owns the database alone
    repos = [_worktree(tmp_path, f"wt{i}") for i in range(3)]
    results: dict[int, object] = {}

    def one(i: int) -> None:
        results[i] = agent.run(SessionRequest(issue_id=f"para-{i}", prompt=f"Work on para-{i}",
                                              workdir=repos[i], title=f"p{i}"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(3):
        assert results[i].ok, results[i].output_tail
        assert (repos[i] / f"p{i}.txt").read_text() == f"{i}\n"
        assert not (repos[i] / f"p{(i + 1) % 3}.txt").exists()
    assert len({results[i].session_id for i in range(3)}) == 3
    assert model.stats()["max_in_flight"] >= 2
    assert agent.server().generation == 1


def test_cancel_aborts_the_session(model, repo, tmp_path, agents):  # noqa: F811
    agent = _agent(model, tmp_path, agents)
    cancel = threading.Event()
    seen = threading.Event()
    started = {}

    def on_event(event):
        started.setdefault("at", time.monotonic())

    def watch():  # cancel once the prompt is in the model's hands
        while not seen.wait(0.1):
            if model.stats()["in_flight"]:
                cancel.set()
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = agent.run(_request(repo, "Work on issue silence-5"), cancel=cancel, on_event=on_event)
    finally:
        seen.set()
        watcher.join()
    assert result.cancelled and not result.ok and not result.retryable
    assert "aborted" in result.output_tail
    assert agent.server().alive()
    assert os.path.isdir(repo)


def test_two_sessions_never_run_in_one_worktree(model, repo, tmp_path, agents):  # noqa: F811
    agent = _agent(model, tmp_path, agents)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault(
        "a", agent.run(_request(repo, "Work on issue slow-6"))))
    first.start()
    deadline = time.monotonic() + 60
    while not model.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    second = agent.run(_request(repo, "Work on issue slow-6"))
    first.join()
    assert not second.ok and "already running" in second.reason
    assert results["a"].ok, results["a"].output_tail


def test_server_killed_mid_session_restarts_and_the_session_continues(model, repo, tmp_path, agents):  # noqa: F811
    agent = _agent(model, tmp_path, agents)
    killed = {}

    def kill_on_first_event(event):
        if not killed:
            killed["pid"] = agent.server().pid
            os.killpg(killed["pid"], signal.SIGKILL)

    result = agent.run(_request(repo, "Work on issue slow-6"), on_event=kill_on_first_event)
    assert not result.ok and result.retryable
    assert result.reason.startswith("lost the opencode server mid-session")
    assert result.session_id
    assert not [p for p in _opencode_pids(tmp_path) if _pgid(p) == killed["pid"]]
    again = agent.run(_request(repo, "Now finish it", session_id=result.session_id))
    assert again.ok, again.output_tail
    assert again.session_id == result.session_id  # the same session, on a new server
    server = agent.server()
    assert server.pid != killed["pid"] and server.generation == 2 and server.restarts == 1


def test_permission_that_would_ask_is_denied_not_waited_on(model, repo, tmp_path, agents):  # noqa: F811
    Path(OUTSIDE).unlink(missing_ok=True)
    agent = _agent(model, tmp_path, agents, stall_timeout=30)
    result = agent.run(_request(repo, "Work on issue outside-7"))
    assert not result.stalled and not result.timed_out
    assert not Path(OUTSIDE).exists()
    assert "tool write failed" in result.output_tail


def test_unknown_model_fails_at_once_and_is_not_retried(model, repo, tmp_path, agents):  # noqa: F811
    agent = _agent(model, tmp_path, agents, model="scripted/no-such-model", stall_timeout=30)
    result = agent.run(_request(repo, "Work on issue demo-1: add hello.py"))
    assert not result.ok and not result.stalled
    assert not result.retryable, result.reason
    assert "Model not found: scripted/no-such-model" in result.reason and "check agent.model" in result.reason


RUNNER = """
import os, sys, time
from beads_runner.agent.opencode_serve import OpenCodeServer
server = OpenCodeServer(sys.argv[1], dict(os.environ), [])
server.ensure()
print("PGID", server.pid, flush=True)
time.sleep(600)
"""


def test_a_server_does_not_outlive_its_runner_killed_with_sigkill(model, tmp_path):
    env = {**os.environ, **model.opencode_env(), "XDG_DATA_HOME": str(tmp_path / "opencode-home" / "data"),
           "XDG_STATE_HOME": str(tmp_path / "opencode-home" / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "opencode-home" / "config")}
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(OPENCODE)], env=env, stdout=subprocess.PIPE,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        line = b""
        while not line.startswith(b"PGID"):  # structlog's lines come first
            line = runner.stdout.readline()
            assert line, "the runner ended before its server started"
        pgid = int(line.split()[1])
        assert [p for p in _opencode_pids(tmp_path) if _pgid(p) == pgid and p != runner.pid]
    finally:
        runner.kill()
        runner.wait()
    deadline = time.monotonic() + 20
    while [p for p in _opencode_pids(tmp_path) if _pgid(p) == pgid] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _opencode_pids(tmp_path) == []  # the watchdog saw its runner go and ended the server
