"""A failed attempt's session is continued by the next attempt (its context kept); a session that
cannot be continued at all (gone from the agent's store: no event came back) is forgotten, and the
attempt after that starts a fresh session with the whole issue prompt."""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path

import pytest

from beads_runner.agent.base import SessionRequest, SessionResult
from beads_runner.config import load_config
from beads_runner.daemon import Runner
from beads_runner.services import Services, register_services
from beads_runner.tracker.jsonl import JsonlTracker
from tests.helpers import git, new_repo


class ScriptedAgent:
    """Plays one scripted answer per session and records every request it was given."""

    name = "scripted"
    model = ""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests: list[SessionRequest] = []
        self.lock = threading.Lock()

    def run(self, request: SessionRequest, *, cancel=None, on_event=None) -> SessionResult:
        with self.lock:
            self.requests.append(request)
            answer = self.answers.pop(0)
        return answer(request, on_event or (lambda event: None))


def fails_after_starting(session_id: str):
    """A session that got going (it has an id and events) and then stalled without a change."""
    def answer(request, on_event):
        on_event({"type": "step_start", "sessionID": session_id, "timestamp": 1})
        return SessionResult(ok=False, reason="stalled", retryable=True, session_id=session_id, events=1,
                             stalled=True)
    return answer


def cannot_continue(request, on_event):
    """The agent's store lost the session: nothing ran, no event came back."""
    return SessionResult(ok=False, reason=f"session {request.session_id} not found", retryable=True,
                         session_id=request.session_id, events=0)


def does_the_work(session_id: str):
    def answer(request, on_event):
        on_event({"type": "step_start", "sessionID": session_id, "timestamp": 1})
        (request.workdir / "work.txt").write_text("done\n")
        return SessionResult(ok=True, session_id=session_id, events=3, summary="Wrote work.txt.")
    return answer


@pytest.fixture
def repo(tmp_path) -> Path:
    path = new_repo(tmp_path / "repo")
    (path / ".gitignore").write_text(".beads-runner/\n")
    (path / ".beads-runner.toml").write_text(textwrap.dedent("""\
        [tracker]
        kind = "jsonl"
        [agent]
        kind = "command"
        command = "true"
        max_attempts = 5
        [engine.retry]
        attempts = 5
        backoff = "0.05s"
        """))
    (path / ".beads").mkdir()
    (path / ".beads" / "issues.jsonl").write_text("")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "init")
    return path


def run_once(repo: Path, agent: ScriptedAgent) -> int:
    svc = register_services(Services(repo, load_config(repo), agent_override=agent))
    return Runner(svc).run(once=True, poll_interval=0.05)


def test_a_session_that_cannot_be_continued_is_replaced_by_a_fresh_one(repo):
    JsonlTracker(repo).create("Write the work file", id="t-1", description="Create work.txt.")
    agent = ScriptedAgent([fails_after_starting("ses_1"), cannot_continue, does_the_work("ses_2")])
    assert run_once(repo, agent) == 0
    first, second, third = agent.requests
    assert first.session_id is None and "Write the work file" in first.prompt
    # The next attempt continues the stalled session, telling it why it stopped.
    assert second.session_id == "ses_1" and "did not finish: stalled" in second.prompt
    # That session is gone: the attempt after starts afresh, with the issue itself as the prompt.
    assert third.session_id is None and "did not finish" not in third.prompt
    assert "Write the work file" in third.prompt
    assert JsonlTracker(repo).show("t-1").status == "closed"
    assert git(repo, "show", "--name-only", "--format=", "main").split() == ["work.txt"]


def test_a_session_that_ran_is_continued_again_not_replaced(repo):
    JsonlTracker(repo).create("Write the work file", id="t-2")
    agent = ScriptedAgent([fails_after_starting("ses_1"), fails_after_starting("ses_1"), does_the_work("ses_1")])
    assert run_once(repo, agent) == 0
    assert [r.session_id for r in agent.requests] == [None, "ses_1", "ses_1"]
