"""The real opencode binary driven by OpenCodeAgent against ScriptedModelServer, in temp git repos.

Each test gets its own opencode data/state/config directories (XDG_*_HOME under tmp_path); the
cache directory (XDG_CACHE_HOME, where opencode would install provider npm packages) is left
shared, so nothing is fetched again per test. opencode 1.18.33 bundles @ai-sdk/openai-compatible.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

import beads_runner
from beads_runner.agent.base import SessionRequest
from beads_runner.agent.opencode import OpenCodeAgent
from beads_runner.config import AgentConfig
from beads_runner.scripted_model import ScriptedModelServer

pytestmark = pytest.mark.e2e

OPENCODE = Path(beads_runner.__file__).resolve().parents[1] / "node_modules" / ".bin" / "opencode"
if not OPENCODE.exists():
    pytest.skip(f"{OPENCODE} is missing: run make setup", allow_module_level=True)

WRITE_HELLO = {"name": "write", "args": {"filePath": "hello.py", "content": "print('hi')\n"}}
SCRIPT = {
    "scenarios": [
        {"match": "demo-1", "rounds": [
            [{"text": "Writing hello.py", "tools": [WRITE_HELLO]}, {"text": "Added hello.py."}],
            [{"text": "Fixing.", "tools": [{"name": "bash", "args": {
                "command": "echo round2 > round2.txt", "description": "write round2.txt"}}]},
             {"text": "Fixed."}],
        ]},
        # Each answer takes 2 s, so a session stays at the model for ~4 s: the three overlap there
        # even when their starts are seconds apart on a loaded machine.
        *[{"match": f"para-{i}", "delay": 2.0, "rounds": [[
            {"text": "Writing", "tools": [{"name": "write", "args": {"filePath": f"p{i}.txt", "content": f"{i}\n"}}]},
            {"text": f"Wrote p{i}.txt."}]]} for i in range(3)],
        # retry-after-ms makes opencode's own 5 retries quick (default: 2 s doubling, ~75 s)
        {"match": "boom", "error": {"status": 500, "message": "scripted boom", "retry_after_ms": 50}},
        {"match": "flaky", "times": 2, "error": {"status": 503, "retry_after_ms": 50},
         "rounds": [[{"text": "Recovered."}]]},
        {"match": "silence", "hang": True},
    ],
}


@pytest.fixture
def model():
    with ScriptedModelServer(SCRIPT) as server:
        yield server


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "README.md").write_text("demo\n")
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    return path


def _agent(model: ScriptedModelServer, tmp_path: Path, **config) -> OpenCodeAgent:
    marker = tmp_path / "opencode-home"
    env = {
        **model.opencode_env(),
        # isolated per test: database, logs, snapshots, locks, config
        "XDG_DATA_HOME": str(marker / "data"),
        "XDG_STATE_HOME": str(marker / "state"),
        "XDG_CONFIG_HOME": str(marker / "config"),
    }
    settings = {"model": "scripted/scripted", "timeout": 180, "stall_timeout": 90, "env": env, **config}
    return OpenCodeAgent(AgentConfig(command=str(OPENCODE), **settings), tmp_path)


def _request(repo: Path, prompt: str, **kw) -> SessionRequest:
    return SessionRequest(issue_id="demo-1", prompt=prompt, workdir=repo, title="e2e", **kw)


def _processes_with_env(marker: str) -> list[int]:
    """pids of live processes whose environment mentions `marker` (our opencode and its children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_session_writes_file_and_succeeds(model, repo, tmp_path):
    agent = _agent(model, tmp_path)
    events = []
    log = tmp_path / "logs" / "demo-1.ndjson"
    started = time.monotonic()
    result = agent.run(_request(repo, "Work on issue demo-1: add hello.py", log_path=log), on_event=events.append)
    elapsed = time.monotonic() - started
    print(f"one real opencode session took {elapsed:.1f}s")
    assert result.ok, result.output_tail
    assert (repo / "hello.py").read_text() == "print('hi')\n"
    assert result.exit_code == 0 and result.reason == ""
    assert result.session_id and result.session_id.startswith("ses_")
    assert result.tokens.total > 0 and result.tokens.input > 0 and result.tokens.output > 0
    assert result.summary == "Added hello.py."
    assert [e["type"] for e in events].count("step_finish") == 2
    assert result.events == len(events) == len(log.read_text().splitlines())
    assert model.stats()["scenarios"] == {"demo-1": 2}


def test_continued_session_gets_round_two(model, repo, tmp_path):
    agent = _agent(model, tmp_path)
    first = agent.run(_request(repo, "Work on issue demo-1: add hello.py"))
    assert first.ok, first.output_tail
    second = agent.run(_request(repo, "The gate failed: fix it", session_id=first.session_id))
    assert second.ok, second.output_tail
    assert second.session_id == first.session_id
    assert (repo / "round2.txt").read_text() == "round2\n"
    assert second.summary == "Fixed."


def test_http_500_ends_not_ok_and_retryable(model, repo, tmp_path):
    agent = _agent(model, tmp_path)
    started = time.monotonic()
    result = agent.run(_request(repo, "Work on issue boom-2: explode"))
    assert time.monotonic() - started < 60
    assert not result.ok
    assert result.exit_code == 1
    assert result.reason.startswith("model API error (HTTP 500): scripted boom")
    assert result.retryable
    assert "APIError" in result.output_tail
    assert model.stats()["scenarios"]["boom"] == 6  # opencode tried once and retried 5 times


def test_transient_errors_are_retried_by_opencode(model, repo, tmp_path):
    result = _agent(model, tmp_path).run(_request(repo, "Work on issue flaky-3"))
    assert result.ok, result.output_tail
    assert result.summary == "Recovered."
    assert model.stats()["scenarios"]["flaky"] == 3


def test_stall_timeout_kills_a_hanging_session(model, repo, tmp_path):
    # 30 s: longer than opencode takes to start and send its request on a loaded 2-core machine
    # (12 s was not), so what stalls is the model call, as the last assertions check.
    agent = _agent(model, tmp_path, stall_timeout=30)
    marker = str(tmp_path / "opencode-home")
    seen = []
    watcher_stop = threading.Event()

    def watch():  # proves the check below can see opencode while it runs
        while not watcher_stop.wait(0.5):
            if _processes_with_env(marker):
                seen.append(True)
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        result = agent.run(_request(repo, "Work on issue silence-4"))
    finally:
        watcher_stop.set()
        watcher.join()
    assert time.monotonic() - started < 90  # the stall timeout, not agent.timeout (180 s)
    assert seen, "never saw the opencode process"
    assert result.stalled and not result.ok and result.retryable
    assert "no output from opencode for 30s" in result.reason
    assert model.stats()["in_flight"] == 1  # the model call was still hanging
    assert _processes_with_env(marker) == []


def test_three_concurrent_sessions(model, tmp_path):
    # opencode 1.18.33 races on the migration of a never-used database when sessions start at
    # once: one session first, then three side by side.
    agent = _agent(model, tmp_path)
    repos = []
    for i in range(4):
        path = tmp_path / f"wt{i}"
        path.mkdir()
        subprocess.run(["git", "init", "-q", str(path)], check=True)
        repos.append(path)
    warm = agent.run(SessionRequest(issue_id="w", prompt="warm up", workdir=repos[3], title="warm"))
    assert warm.ok, warm.output_tail
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


def test_cancel_kills_opencode(model, repo, tmp_path):
    agent = _agent(model, tmp_path)
    cancel = threading.Event()
    timer = threading.Timer(2.0, cancel.set)
    timer.start()
    try:
        result = agent.run(_request(repo, "Work on issue silence-5"), cancel=cancel)
    finally:
        timer.cancel()
    assert result.cancelled and not result.ok
    assert result.duration_s < 45  # killed by the cancel, not by the stall timeout (90 s)
    assert _processes_with_env(str(tmp_path / "opencode-home")) == []
    assert os.path.isdir(repo)


def test_a_write_outside_the_worktree_is_denied_and_ends_the_session_naming_the_permission(repo, tmp_path):
    outside = tmp_path / "outside" / "escape.txt"
    outside.parent.mkdir()
    script = {"scenarios": [{"match": "escape", "rounds": [
        [{"text": "Writing outside.", "tools": [{"name": "write", "args": {"filePath": str(outside),
                                                                             "content": "escaped\n"}}]},
         # Never answered: only the runner ending the session at the refusal ends it (else the 90 s
         # stall would, with another reason). Whether opencode sends this request before the end lands
         # is a race on a loaded machine, so it is not counted.
         {"text": "Trying again.", "hang": True}],
    ]}]}
    with ScriptedModelServer(script) as server:
        result = _agent(server, tmp_path).run(_request(repo, "Work on escape: write outside"))
        requests = server.stats()["scenarios"]
    assert not outside.exists()  # denied, not merely asked
    assert not result.ok and not result.retryable and not result.cancelled, result
    assert "external_directory" in result.reason and "permission" in result.reason, result.reason
    assert "stall" not in result.reason and "timed out" not in result.reason, result.reason
    assert requests.get("escape") in (1, 2)  # the refused turn was asked for; nothing past the hung one
