"""The whole flow with agent.mode = "server": the very test bodies the `run` mode passes (the flow
with its session cap, the fix loop, kill -9 of the runner mid-session), run on repositories whose
config says `mode = "server"`; and after each, no `opencode serve` left running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e import conftest
from tests.e2e import test_crash_safety as crash
from tests.e2e import test_flow as flow
from tests.e2e.test_opencode_agent import _processes_with_env


@pytest.fixture(autouse=True)
def server_mode(monkeypatch):
    monkeypatch.setattr(conftest, "AGENT_MODE", "server")


def _opencode_left(tmp_path: Path) -> list[int]:
    return _processes_with_env(str(tmp_path / "opencode-data"))  # runner_env's XDG_DATA_HOME


def test_four_issues_land_within_the_session_cap(tmp_path, runner_env):
    flow.test_four_issues_land_in_dependency_order_with_trailers_and_close_reasons(tmp_path, runner_env)
    assert "mode = \"server\"" in (tmp_path / "repo" / ".beads-runner.toml").read_text()
    assert _opencode_left(tmp_path) == []


def test_the_fix_loop_continues_the_same_session(tmp_path, runner_env):
    flow.test_the_fix_loop_feeds_the_gate_report_to_the_same_session_which_fixes_it(tmp_path, runner_env)
    assert _opencode_left(tmp_path) == []


def test_kill_9_mid_session_then_restart_continues_it_and_lands_once(tmp_path, runner_env):
    # The killed runner's server is still waiting on the model; the next runner kills it (procreg)
    # before it resumes, and continues the session on its own server.
    crash.test_kill_9_at_each_point_then_restart_lands_exactly_once("session-edited", tmp_path, runner_env)
    assert _opencode_left(tmp_path) == []


def test_two_signals_abort_the_session_stop_the_server_and_a_restart_lands(tmp_path, runner_env):
    repo = conftest.sample_repo(tmp_path / "repo")
    the_issue = conftest.create_issue(repo, "Add the feature")
    script = {"scenarios": [{"match": f"Issue {the_issue} ", "rounds": [
        [{"text": "Writing.", "tools": [{"name": "write", "args": {"filePath": "pkg/feature.py",
                                                                    "content": "FEATURE = True\n"}}]},
         {"text": "Added pkg/feature.py.", "hang": True}],
        [{"text": "Picked up where I left off; pkg/feature.py is complete."}],
    ]}]}
    env, model = runner_env(script)
    output = tmp_path / "runner.out"
    with open(output, "wb") as sink:
        proc = subprocess.Popen([str(conftest.BEADS_RUNNER), "--repo", str(repo), "start"], env=env,
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 180
    while model.stats()["scenarios"].get(f"Issue {the_issue} ", 0) < 2 or not model.stats()["in_flight"]:
        if time.monotonic() > deadline or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the session never reached its hanging turn: {model.stats()}\n"
                        f"{output.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    assert _opencode_left(tmp_path)  # the server is there, waiting on the model
    os.killpg(proc.pid, signal.SIGTERM)
    # The second signal only once the first was handled: two sent close together can reach the
    # runner as one on a busy machine, and then this would measure the grace period instead.
    handled = time.monotonic() + 60
    while "no new claims" not in output.read_text(errors="replace") and time.monotonic() < handled:
        time.sleep(0.05)
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert time.monotonic() - started < 20, output.read_text(errors="replace")[-3000:]
    assert _opencode_left(tmp_path) == []  # aborted, and the server stopped with its runner
    assert conftest.issue(repo, the_issue)["status"] == "in_progress"  # still ours, resumable

    result = conftest.run_cli(repo, env, "start", "--once")

    assert result.returncode == 0, result.stderr[-3000:]
    assert conftest.issue(repo, the_issue)["status"] == "closed"
    assert conftest.git(repo, "show", "main:pkg/feature.py") == "FEATURE = True\n"
    assert _opencode_left(tmp_path) == []
