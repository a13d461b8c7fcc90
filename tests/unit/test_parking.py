"""Provider limits: what a provider's words mean, how long a park lasts, and how opencode's own log
shows what its event stream does not."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from beads_runner.agent.opencode_log import OpencodeLogWatch
from beads_runner.config import Config, validate_config
from beads_runner.limits import AUTH, QUOTA, RATE, classify, reset_time
from beads_runner.parking import Admission, Parking, budget_park, provider_scope

NOW = 1_800_000_000.0


@pytest.mark.parametrize("text", [
    "AI_APICallError: You exceeded your current quota, please check your plan and billing details.",
    '429 {"error": {"code": "insufficient_quota"}}',
    "Claude usage limit reached. Your limit will reset at 2026-12-01T05:00:00Z",
    "Your credit balance is too low to access the Anthropic API",
    "RESOURCE_EXHAUSTED: quota exceeded for this project",
])
def test_spent_quotas_park(text):
    assert classify(text, now=NOW).kind == QUOTA


@pytest.mark.parametrize("text", [
    "401 Incorrect API key provided: sk-abc",
    "AuthenticationError: invalid x-api-key",
    "the API key is expired",
])
def test_refused_credentials_park_until_resume(text):
    assert classify(text, now=NOW).kind == AUTH


@pytest.mark.parametrize("text", ["429 Too Many Requests", "Rate limit reached for gpt-4o, try again in 2s",
                                  "503 overloaded", "The operation timed out."])
def test_transient_errors_do_not_park(text):
    found = classify(text, now=NOW)
    assert found.kind == RATE and not found.parks


def test_a_rate_limit_with_a_long_retry_after_is_a_quota():
    assert classify("429 rate limit exceeded; retry after 2h", now=NOW).kind == QUOTA
    assert classify("nothing to see here", now=NOW) is None


def test_reset_times_in_the_message():
    assert reset_time("try again in 1m30s", now=NOW) == NOW + 90
    assert reset_time("retry-after: 20", now=NOW) == NOW + 20
    at = reset_time("Your limit resets at 2026-12-01T05:00:00Z", now=NOW)
    assert at == datetime(2026, 12, 1, 5, tzinfo=UTC).timestamp()
    assert reset_time("You exceeded your current quota", now=NOW) is None


def test_a_park_without_a_reset_time_backs_off_doubling_up_to_the_cap(tmp_path):
    parking = Parking(tmp_path)
    waits = []
    for n in range(5):
        now = NOW + n * 1000
        park, new = parking.park("provider:x", QUOTA, "quota", reset_at=None, backoff=10, backoff_max=60, now=now)
        assert new  # the previous park was over
        waits.append(park.until - now)
    assert waits == [10, 20, 40, 60, 60]
    parking.got_through("provider:x", now=NOW + 10**6)
    park, _ = parking.park("provider:x", QUOTA, "quota", reset_at=None, backoff=10, backoff_max=60, now=NOW + 10**6)
    assert park.until - (NOW + 10**6) == 10  # a session got through: the backoff starts over


def test_sessions_hitting_the_same_limit_together_do_not_escalate_the_backoff(tmp_path):
    parking = Parking(tmp_path)
    first, new = parking.park("provider:x", QUOTA, "q", reset_at=None, backoff=10, backoff_max=60, now=NOW)
    second, again = parking.park("provider:x", QUOTA, "q", reset_at=None, backoff=10, backoff_max=60, now=NOW + 1)
    assert new and not again
    assert second.until == first.until == NOW + 10 and second.strikes == 1
    third, new = parking.park("provider:x", QUOTA, "q", reset_at=None, backoff=10, backoff_max=60, now=NOW + 11)
    assert new and third.until == NOW + 11 + 20  # the next park in a row doubles
    auth, _ = parking.park("provider:x", AUTH, "401", reset_at=None, backoff=10, backoff_max=60, now=NOW + 12)
    assert auth.until is None  # refused credentials outlast any quota reset


def test_a_named_reset_time_wins_and_a_second_session_does_not_shorten_the_park(tmp_path):
    parking = Parking(tmp_path)
    park, new = parking.park("provider:x", QUOTA, "q", reset_at=NOW + 500, backoff=10, backoff_max=60, now=NOW)
    assert new and park.until == NOW + 500
    again, new = parking.park("provider:x", QUOTA, "q", reset_at=None, backoff=10, backoff_max=60, now=NOW + 1)
    assert not new and again.until == NOW + 500
    assert [p.scope for p in parking.active(now=NOW + 2)] == ["provider:x"]
    assert parking.ended(now=NOW + 2) == []
    assert [p.scope for p in parking.ended(now=NOW + 501)] == ["provider:x"]
    assert parking.ended(now=NOW + 502) == []  # announced once
    assert parking.active(now=NOW + 502) == []


def test_a_credentials_park_lasts_until_resume(tmp_path):
    parking = Parking(tmp_path)
    park, _ = parking.park("provider:x", AUTH, "401", reset_at=None, backoff=10, backoff_max=60, now=NOW)
    assert park.until is None and "resume" in park.what_would_change_it()
    assert parking.ended(now=NOW + 10**7) == [] and parking.active(now=NOW + 10**7)
    assert [p.scope for p in parking.resume()] == ["provider:x"]
    assert parking.active() == []


def test_admission_holds_sessions_while_the_provider_is_parked(tmp_path):
    config = validate_config({"agent": {"model": "openai/gpt-x"}}, "t")
    assert provider_scope(config) == "provider:openai"
    admission = Admission(config, tmp_path, ttl=0)
    assert admission.admit("opencode")
    Parking(tmp_path).park("provider:openai", QUOTA, "q", reset_at=None, backoff=60, backoff_max=60)
    assert not admission.admit("opencode") and admission.parked()
    Parking(tmp_path).park("provider:other", AUTH, "q", reset_at=None, backoff=60, backoff_max=60)
    Parking(tmp_path).resume("provider:openai")
    assert admission.admit("opencode")  # another provider's park is not ours


def test_the_daily_budget_parks_until_the_day_turns_or_is_raised(tmp_path, monkeypatch):
    config = validate_config({"agent": {"daily_budget_usd": 1.0}}, "t")
    monkeypatch.setattr("beads_runner.costs.spent_today", lambda state_dir, now=None: 1.5)
    park = budget_park(config, tmp_path, now=NOW)
    assert park is not None and park.kind == "budget" and park.until > NOW
    assert "--raise-budget" in park.what_would_change_it()
    Parking(tmp_path).raise_budget(5.0, now=NOW)
    assert budget_park(config, tmp_path, now=NOW) is None
    assert budget_park(Config(), tmp_path, now=NOW) is None


OPENCODE_LOG = """\
timestamp=2026-12-01T00:51:53.423Z level=INFO run=e10412c9 message="creating instance" directory={ours}
timestamp=2026-12-01T00:51:53.423Z level=INFO run=aaaaaaaa message="creating instance" directory={theirs}
timestamp=2026-12-01T00:52:08.476Z level=INFO run=e10412c9 message=stream providerID=openai modelID=gpt session.id=ses_1
timestamp=2026-12-01T00:52:08.630Z level=ERROR run=aaaaaaaa message="stream error" providerID=openai \
error.error="AI_APICallError: Incorrect API key provided"
timestamp=2026-12-01T00:52:08.630Z level=ERROR run=e10412c9 message="stream error" providerID=openai \
error.error="AI_APICallError: 503 overloaded"
"""
QUOTA_LINE = ('timestamp=2026-12-01T00:52:11.098Z level=ERROR run=e10412c9 message="stream error" providerID=openai '
              'modelID=gpt error.error="AI_APICallError: You exceeded your current quota, please check your plan and '
              'billing details."\n')


def test_opencode_log_shows_the_sessions_own_provider_errors(tmp_path):
    logs = tmp_path / "log"
    logs.mkdir()
    log = logs / "opencode.log"
    log.write_text("timestamp=x level=ERROR run=old message=\"stream error\" error.error=\"insufficient_quota\"\n")
    ours, theirs = tmp_path / "wt-a", tmp_path / "wt-b"
    watch = OpencodeLogWatch(logs, ours)  # what was there before the session is not read
    with log.open("a") as fh:
        fh.write(OPENCODE_LOG.format(ours=ours, theirs=theirs))
    assert watch.poll() is None  # another session's refused key, and our own transient error
    assert watch.last_error == "AI_APICallError: 503 overloaded"
    with log.open("a") as fh:
        fh.write(QUOTA_LINE[:60])  # half a line: not yet
    assert watch.poll() is None
    with log.open("a") as fh:
        fh.write(QUOTA_LINE[60:])
    found = watch.poll()
    assert found is not None and found.kind == QUOTA and "exceeded your current quota" in found.message


def test_after_a_quota_park_one_session_probes_before_the_others_start(tmp_path):
    config = validate_config({"agent": {"model": "openai/gpt-x"}}, "t")
    running = {"n": 0}
    admission = Admission(config, tmp_path, ttl=0, sessions_in_use=lambda: running["n"])
    parking = Parking(tmp_path)
    parking.park("provider:openai", QUOTA, "q", reset_at=None, backoff=0.01, backoff_max=0.01)
    time.sleep(0.02)  # the park's time has passed
    assert admission.admit("opencode")  # the probe
    running["n"] = 1
    assert not admission.admit("opencode")  # the others wait for it
    parking.got_through("provider:openai")  # it reached the provider
    assert admission.admit("opencode")
    running["n"] = 0
    parking.park("provider:openai", AUTH, "401", reset_at=None, backoff=1, backoff_max=1)
    parking.resume()
    running["n"] = 2
    assert admission.admit("opencode")  # a person's resume is not a probe
