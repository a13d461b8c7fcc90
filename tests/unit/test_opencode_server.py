"""The pure parts of agent.mode = "server": the server's events translated into `opencode run`'s,
provider retries, and the permission ruleset that keeps every session from waiting on a person.
(The real server is driven in tests/e2e/test_opencode_server_agent.py.)"""

from __future__ import annotations

import json

from beads_runner.agent import make_agent
from beads_runner.agent.events import SessionEvents
from beads_runner.agent.opencode import OpenCodeAgent
from beads_runner.agent.opencode_server import OpenCodeServerAgent
from beads_runner.agent.permissions import ALLOWED_CLASSES, DENIED_CLASSES, permission_rules
from beads_runner.agent.server_events import provider_retry, run_events
from beads_runner.config import AgentConfig

SID = "ses_1"


def _part(**part):
    return {"type": "message.part.updated", "properties": {"sessionID": SID, "part": {"sessionID": SID, **part}}}


def _decide(rules, permission, pattern="x"):
    """opencode's rule: the last matching rule wins ("*" matches anything)."""
    action = None
    for rule in rules:
        if rule["permission"] in ("*", permission) and rule["pattern"] in ("*", pattern):
            action = rule["action"]
    return action


def test_mode_selects_the_server_agent_and_run_stays_the_default(tmp_path):
    assert AgentConfig().mode == "run"
    assert type(make_agent(AgentConfig(), tmp_path)) is OpenCodeAgent
    assert isinstance(make_agent(AgentConfig(mode="server"), tmp_path), OpenCodeServerAgent)


def test_finished_parts_become_run_events_in_opencode_run_order():
    stream = [
        _part(type="step-start", snapshot="abc"),
        _part(type="text", text="", time={"start": 1}),  # still being written: not yet
        _part(type="tool", tool="write", state={"status": "running"}),  # running: not yet
        _part(type="text", text="Writing", time={"start": 1, "end": 2}),
        _part(type="tool", tool="write", state={"status": "completed", "input": {}, "output": "ok"}),
        _part(type="step-finish", reason="tool-calls", tokens={"total": 10, "input": 8, "output": 2}, cost=0.5),
        _part(type="step-start"),
        _part(type="text", text="Done.", time={"start": 3, "end": 4}),
        _part(type="step-finish", reason="stop", tokens={"total": 5, "input": 4, "output": 1}, cost=0.25),
    ]
    tree = {SID}
    out = [e for raw in stream for e in run_events(raw, SID, tree)]
    assert [e["type"] for e in out] == ["step_start", "text", "tool_use", "step_finish", "step_start", "text",
                                        "step_finish"]
    assert all(e["sessionID"] == SID and isinstance(e["timestamp"], int) for e in out)
    folded = SessionEvents()
    for event in out:
        folded.feed(json.dumps(event))  # what the NDJSON log holds folds the same way
    verdict = folded.verdict(0)
    assert verdict.ok and folded.summary == "Done."
    assert folded.tokens.total == 15 and folded.cost == 0.75 and folded.unknown == 0


def test_session_error_becomes_an_error_event_and_fails_the_verdict():
    raw = {"type": "session.error", "properties": {"sessionID": SID, "error": {
        "name": "APIError", "data": {"message": "quota exceeded", "statusCode": 429}}}}
    events = SessionEvents()
    for event in run_events(raw, SID, {SID}):
        events.add(event)
    verdict = events.verdict(0)
    assert not verdict.ok and verdict.retryable
    assert verdict.reason == "model API error (HTTP 429): quota exceeded"


def test_other_sessions_and_children_parts_are_not_ours_but_children_join_the_tree():
    tree = {SID}
    other = {"type": "message.part.updated", "properties": {"part": {"sessionID": "ses_other", "type": "step-start"}}}
    assert run_events(other, SID, tree) == []
    child = {"type": "session.created", "properties": {"info": {"id": "ses_child", "parentID": SID}}}
    assert run_events(child, SID, tree) == [] and tree == {SID, "ses_child"}
    stranger = {"type": "session.created", "properties": {"info": {"id": "ses_x", "parentID": "ses_other"}}}
    run_events(stranger, SID, tree)
    assert "ses_x" not in tree


def test_retry_status_becomes_a_provider_retry_with_its_message_and_next_attempt():
    raw = {"type": "session.status", "properties": {"sessionID": SID, "status": {
        "type": "retry", "attempt": 2, "message": "Rate limit exceeded (HTTP 429)", "next": 1_796_000_000_000}}}
    [event] = run_events(raw, SID, {SID})
    assert event["type"] == "provider_retry" and event["attempt"] == 2
    retry = provider_retry(event)
    assert retry.attempt == 2 and retry.message == "Rate limit exceeded (HTTP 429)"
    assert retry.next_at == 1_796_000_000.0
    events = SessionEvents()
    events.add(event)
    assert events.provider_retries == 1 and events.unknown == 0
    busy = {"type": "session.status", "properties": {"sessionID": SID, "status": {"type": "busy"}}}
    assert run_events(busy, SID, {SID}) == []


def test_every_permission_class_is_decided_and_none_asks():
    rules = permission_rules(None)
    assert all(rule["action"] in ("allow", "deny") for rule in rules)
    for name in ALLOWED_CLASSES:
        assert _decide(rules, name) == "allow"
    for name in DENIED_CLASSES:  # what a non-interactive `opencode run` would ask and then auto-reject
        assert _decide(rules, name) == "deny"
    assert _decide(rules, "some_future_tool") == "allow"


def test_the_users_opencode_permission_wins_and_ask_reads_as_deny():
    # opencode reads a pattern map in order and applies the last matching rule, as here
    rules = permission_rules(json.dumps({"bash": "ask", "edit": {"*": "allow", "*.lock": "deny"}, "webfetch": "deny"}))
    assert _decide(rules, "bash") == "deny"
    assert _decide(rules, "webfetch") == "deny"
    assert _decide(rules, "edit", "x.py") == "allow"
    assert _decide(rules, "edit", "*.lock") == "deny"
    assert _decide(rules, "read") == "allow"
    assert permission_rules("not json") == permission_rules(None)
    assert all(r["action"] == "deny" for r in permission_rules('"ask"')[-1:])


def test_the_servers_model_not_found_is_a_configuration_error_not_retried():
    events = SessionEvents()
    events.add({"type": "error", "error": {"name": "UnknownError",
                                           "data": {"message": "Model not found: scripted/nope."}}})
    verdict = events.verdict(0)
    assert not verdict.ok and not verdict.retryable
    assert verdict.reason == "opencode error (UnknownError): Model not found: scripted/nope. (check agent.model)"
