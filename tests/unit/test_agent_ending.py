"""The one wording of a session's bad ending (agent/ending.py), shared by the three agent kinds."""

from types import SimpleNamespace

from beads_runner.agent.ending import CANCELLED, limit_ending, supervisor_ending


def _ending(**flags):
    base = {"timed_out": False, "stalled": False, "cancelled": False}
    return supervisor_ending(**{**base, **flags}, timeout=90, stall_timeout=7.5,
                             silent="output from opencode", ended="killed")


def test_a_session_that_ended_by_itself_has_no_imposed_ending():
    assert _ending() is None


def test_timeout_is_retryable_and_names_the_setting():
    ending = _ending(timed_out=True, stalled=True)  # the timeout wins over a stall seen at the same moment
    assert ending.reason == "session exceeded agent.timeout (90s) and was killed"
    assert ending.retryable


def test_stall_names_what_was_missing_and_the_setting():
    ending = _ending(stalled=True, cancelled=True)
    assert ending.reason == "no output from opencode for 7.5s (agent.stall_timeout); session killed"
    assert ending.retryable


def test_a_cancel_is_not_retried():
    ending = _ending(cancelled=True)
    assert (ending.reason, ending.retryable) == (CANCELLED, False)


def test_a_provider_limit_is_retryable_and_its_message_is_bounded():
    ending = limit_ending(SimpleNamespace(kind="quota", message="x" * 500))
    assert ending.reason == "the provider refused the session (quota): " + "x" * 200
    assert ending.retryable
