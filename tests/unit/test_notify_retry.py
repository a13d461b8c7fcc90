"""Webhook delivery retries (notify.py, over tenacity): which failures are retried, how often, and
that closing the notifier ends the waiting."""

import urllib.error

from beads_runner.config import NotifyConfig
from beads_runner.notify import Notifier


def _notifier(answers, retries=3, backoff=0.001):
    calls = []

    def sender(url, body, headers, timeout):
        calls.append(url)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    endpoint = NotifyConfig(url="http://hook.invalid/x", retries=retries, backoff=backoff)
    return Notifier([endpoint], sender=sender), endpoint, calls


def test_a_failing_endpoint_is_tried_again_until_it_answers():
    notifier, endpoint, calls = _notifier([OSError("refused"), 503, 200])
    notifier._deliver(endpoint, [{"event": "landed"}])
    assert len(calls) == 3 and notifier.delivered == 1 and notifier.failed == 0


def test_retries_are_bounded_by_the_endpoints_setting():
    notifier, endpoint, calls = _notifier([500], retries=2)
    notifier._deliver(endpoint, [{"event": "landed"}, {"event": "parked"}])
    assert len(calls) == 3 and notifier.failed == 2 and notifier.delivered == 0


def test_a_refused_body_is_not_sent_again_but_a_rate_limit_is():
    refused = urllib.error.HTTPError("http://hook.invalid/x", 400, "bad", {}, None)
    notifier, endpoint, calls = _notifier([refused])
    notifier._deliver(endpoint, [{"event": "landed"}])
    assert len(calls) == 1 and notifier.failed == 1
    limited = urllib.error.HTTPError("http://hook.invalid/x", 429, "slow down", {}, None)
    notifier, endpoint, calls = _notifier([limited, 204])
    notifier._deliver(endpoint, [{"event": "landed"}])
    assert len(calls) == 2 and notifier.delivered == 1


def test_closing_ends_the_wait_for_a_retry():
    notifier, endpoint, calls = _notifier([500], backoff=3600.0)  # a retry would wait an hour
    notifier._stop.set()
    notifier._deliver(endpoint, [{"event": "landed"}])
    assert len(calls) == 1 and notifier.failed == 1
