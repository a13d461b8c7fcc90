"""opencode's real `--format json` streams (recorded copies in tests/fixtures/opencode) folded into verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beads_runner.agent.base import TokenUsage
from beads_runner.agent.events import SessionEvents

SHARED = Path(__file__).resolve().parents[1] / "fixtures" / "opencode"

# file -> (exit code opencode gave, ok, retryable, session id, reason starts with, tokens total)
EXPECTED = {
    "run-success.events.ndjson": (0, True, True, "ses_dfec86d3affehyLbXwlAJ9i4V4", "", 219),
    "run-http500.events.ndjson": (1, False, True, "ses_dfec7ac7affePt0Z1dy3DO3BDI",
                                  "model API error (HTTP 500): fake internal error", 0),
    "run-permission-rejected.events.ndjson": (0, False, True, "ses_dfeb64369ffeuoM540a7B7BbwI",
                                              "session ended without finishing (last step: tool-calls)", 151),
    "run-provider-timeout.events.ndjson": (1, False, True, "ses_dfec2c29bffelFDCpL4XqbBVpX",
                                           "model request failed (UnknownError): The operation timed out.", 0),
    "run-unknown-model.events.ndjson": (1, False, False, "ses_dfec41c0cffe2JqwNgAQTMQRxB",
                                        "opencode error (UnknownError): Unexpected server error", 0),
}


def _recorded(name: str) -> Path:
    return SHARED / name


def _fold(path: Path) -> SessionEvents:
    events = SessionEvents()
    for line in path.read_text(encoding="utf-8").splitlines():
        events.feed(line)
    return events


def test_every_recorded_stream_is_covered():
    assert sorted(p.name for p in SHARED.glob("*.ndjson")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_stream_verdicts(name):
    exit_code, ok, retryable, session_id, reason, total = EXPECTED[name]
    events = _fold(_recorded(name))
    verdict = events.verdict(exit_code)
    assert verdict.ok is ok
    assert verdict.retryable is retryable
    assert verdict.reason.startswith(reason)
    assert "\n" not in verdict.reason
    assert events.session_id == session_id
    assert events.tokens.total == total
    assert events.garbage == 0 and events.unknown == 0


def test_success_stream_details():
    events = _fold(_recorded("run-success.events.ndjson"))
    assert events.events == 7
    assert events.steps == 2
    assert events.last_reason == "stop"
    assert events.summary == "I wrote hello.txt. Done."
    assert events.tokens == TokenUsage(total=219, input=205, output=14)
    assert events.cost == 0.0
    assert [(t.tool, t.status, t.error) for t in events.tools] == [("write", "completed", "")]
    assert events.error is None


def test_success_events_but_nonzero_exit_is_not_ok():
    events = _fold(_recorded("run-success.events.ndjson"))
    verdict = events.verdict(1)
    assert not verdict.ok and verdict.reason == "opencode exited 1" and verdict.retryable
    assert events.verdict(-9).reason == "opencode was killed by signal 9"


def test_http500_error_fields():
    events = _fold(_recorded("run-http500.events.ndjson"))
    assert events.error is not None
    assert (events.error.name, events.error.status_code, events.error.message) == (
        "APIError", 500, "fake internal error")
    # an error event decides even when opencode exits 0
    assert not events.verdict(0).ok


def test_permission_rejected_tool_error_is_recorded():
    events = _fold(_recorded("run-permission-rejected.events.ndjson"))
    assert [t.status for t in events.failed_tools] == ["error"]
    assert "rejected permission" in events.failed_tools[0].error
    assert events.summary == "Writing the file."


def test_garbage_and_unknown_lines_are_tolerated():
    events = SessionEvents()
    lines = [
        "", "   ", "not json at all", "[1, 2, 3]", '"a string"', "{broken json", b"\xff\xfe garbage",
        json.dumps({"type": "something_new", "sessionID": "ses_x", "whatever": 1}),
        json.dumps({"type": "step_finish", "part": {"reason": "stop", "tokens": "bad", "cost": "free"}}),
        json.dumps({"type": "step_finish", "part": {"reason": "stop", "cost": 0.25,
                                                    "tokens": {"total": 10, "input": 6, "output": 4,
                                                               "reasoning": 1, "cache": {"read": 3, "write": 2}}}}),
        json.dumps({"type": "text", "part": {"text": "   "}}),  # blank text does not replace the summary
    ]
    parsed = [events.feed(line) for line in lines]
    assert parsed[:7] == [None] * 7
    assert events.garbage == 5
    assert events.unknown == 1
    assert events.events == 4
    assert events.session_id == "ses_x"
    assert events.tokens == TokenUsage(total=10, input=6, output=4, reasoning=1, cache_read=3, cache_write=2)
    assert events.cost == 0.25
    assert events.summary == ""
    assert events.verdict(0).ok


def test_tokens_and_cost_sum_over_steps():
    events = SessionEvents()
    step = {"type": "step_finish", "sessionID": "ses_1",
            "part": {"reason": "tool-calls", "cost": 0.5,
                     "tokens": {"total": 5, "input": 4, "output": 1, "cache": {"read": 7, "write": 1}}}}
    events.feed(json.dumps(step))
    step["part"]["reason"] = "stop"
    events.feed(json.dumps(step))
    assert events.tokens.total == 10 and events.tokens.cache_read == 14 and events.tokens.cache_write == 2
    assert events.cost == 1.0
    assert events.steps == 2


@pytest.mark.parametrize(("error", "retryable", "reason"), [
    ({"name": "APIError", "data": {"message": "busy", "statusCode": 429}}, True, "model API error (HTTP 429): busy"),
    ({"name": "APIError", "data": {"message": "bad gateway", "statusCode": 502}}, True, "model API error (HTTP 502)"),
    ({"name": "APIError", "data": {"message": "invalid key", "statusCode": 401}}, False, "model API error (HTTP 401)"),
    ({"name": "APIError", "data": {"message": "no such model", "statusCode": 404}}, False,
     "model API error (HTTP 404)"),
    ({"name": "ProviderAuthError", "data": {"message": "no credentials"}}, False, "opencode error (ProviderAuthError)"),
    ({"name": "ProviderModelNotFoundError", "data": {"message": "x"}}, False, "opencode error"),
    ({"name": "UnknownError", "data": {"message": "fetch failed: ECONNREFUSED"}}, True, "model request failed"),
    ({"name": "MessageAbortedError", "data": {"message": "aborted"}}, True, "opencode error (MessageAbortedError)"),
    ("just a string", True, "opencode error (Error): just a string"),
])
def test_error_classification(error, retryable, reason):
    events = SessionEvents()
    events.feed(json.dumps({"type": "error", "sessionID": "ses_e", "error": error}))
    verdict = events.verdict(1)
    assert not verdict.ok
    assert verdict.retryable is retryable
    assert verdict.reason.startswith(reason)


def test_empty_stream_is_not_ok():
    events = SessionEvents()
    assert events.verdict(0).reason == "session ended without finishing (no step finished)"
    assert events.verdict(None).reason == "opencode did not exit (killed)"
