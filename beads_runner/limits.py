"""What kind of failure a provider's error is: passing, or a limit that no retry can beat soon.

- `rate`: a rate limit or an overloaded provider (429 without a quota word, 5xx, timeouts):
  transient, retried as any failure (opencode itself retries these first).
- `quota`: the account's quota or usage is spent (`insufficient_quota`, "usage limit reached",
  "exceeded your current quota", a 429 whose retry-after is long): the run is parked, not failed,
  until the reset (the time the message gives, else a capped backoff).
- `auth`: the credentials are refused or expired: parked until a person runs `beads-runner resume`.

Pure functions over the provider's own words, so every agent kind and log source can use them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

QUOTA = "quota"
AUTH = "auth"
RATE = "rate"

_QUOTA = re.compile(
    r"insufficient[_ ]quota|exceeded your (current )?quota|quota (has been |was )?(exceeded|exhausted|reached)"
    r"|usage limit|usage cap|credit balance is too low|out of credits|billing (hard )?limit|"
    r"resource[_ ]exhausted|limit reached for (today|this (day|month|period))",
    re.IGNORECASE)
_AUTH = re.compile(
    r"invalid[_ ]api[_ ]key|incorrect api key|invalid x-api-key|authentication[_ ](failed|error)|unauthori[sz]ed"
    r"|api key (is )?(expired|revoked|invalid|not valid)|token (has )?expired|permission[_ ]denied|\b401\b",
    re.IGNORECASE)
_RATE = re.compile(r"rate[_ ]limit|too many requests|\b429\b|overloaded|\b5\d\d\b|timed out|timeout",
                   re.IGNORECASE)
# "try again in 20s", "retry after 1m30s", "resets in 2h", "retry-after: 120"
_IN = re.compile(r"(?:try again|retry|reset[s]?|available again)\s*(?:after|in)?\s*:?\s*"
                 r"((?:\d+(?:\.\d+)?\s*(?:ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?)\s*)+)",
                 re.IGNORECASE)
_RETRY_AFTER = re.compile(r"retry[-_ ]after(?:[-_]ms)?\W+(\d+(?:\.\d+)?)", re.IGNORECASE)
_AT = re.compile(r"(?:reset[s]?|try again|available again)\s+(?:at|on)\s+"
                 r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|UTC|[+-]\d{2}:?\d{2})?)",
                 re.IGNORECASE)
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)", re.IGNORECASE)
_UNIT = {"ms": 0.001, "millisecond": 0.001, "milliseconds": 0.001, "s": 1, "sec": 1, "secs": 1, "second": 1,
         "seconds": 1, "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600,
         "hrs": 3600, "hour": 3600, "hours": 3600}


@dataclass(frozen=True)
class ProviderLimit:
    kind: str  # quota | auth | rate
    message: str  # the provider's words, one line
    reset_at: float | None = None  # Unix time the provider named (None: it did not say)

    @property
    def parks(self) -> bool:
        return self.kind in (QUOTA, AUTH)


def reset_time(text: str, now: float | None = None) -> float | None:
    """The reset time a message names: "try again in 1m30s", "retry-after: 20", "resets at
    2026-12-01T03:00:00Z". None if it names none."""
    now = time.time() if now is None else now
    if m := _AT.search(text):
        raw = m.group(1).strip().replace(" UTC", "+00:00").replace("UTC", "+00:00").replace("Z", "+00:00")
        try:
            when = datetime.fromisoformat(raw.replace(" ", "T", 1))
        except ValueError:
            when = None
        if when is not None:
            return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if m := _IN.search(text):
        seconds = sum(float(n) * _UNIT.get(u.lower(), 0) for n, u in _PART.findall(m.group(1)))
        if seconds > 0:
            return now + seconds
    if m := _RETRY_AFTER.search(text):
        value = float(m.group(1))
        return now + (value / 1000 if "ms" in m.group(0).lower() else value)
    return None


def classify(text: str, *, now: float | None = None, long_wait: float = 300.0) -> ProviderLimit | None:
    """The limit a provider's error text shows, or None when it shows none we know.

    A rate limit whose reset is further than `long_wait` away is a quota in all but name: waiting
    inside a session for it would only look like a stall."""
    if not text:
        return None
    line = " ".join(text.split())[:500]
    reset = reset_time(line, now)
    if _QUOTA.search(line):
        return ProviderLimit(QUOTA, line, reset)
    if _AUTH.search(line):
        return ProviderLimit(AUTH, line, None)
    if _RATE.search(line):
        now = time.time() if now is None else now
        if reset is not None and reset - now > long_wait:
            return ProviderLimit(QUOTA, line, reset)
        return ProviderLimit(RATE, line, reset)
    return None
