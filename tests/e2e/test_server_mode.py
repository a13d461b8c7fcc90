"""The whole flow with agent.mode = "server": the very test bodies the `run` mode passes (the flow
with its session cap, the fix loop, kill -9 of the runner mid-session), run on repositories whose
config says `mode = "server"`; and after each, no `opencode serve` left running."""

from __future__ import annotations

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
