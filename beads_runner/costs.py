"""Tokens and money spent by agent sessions: per session, per run, per UTC day, against a budget.

Two sources, per attempt of a run's process step (its sessions: the first and the fix loop's):

- the agent's raw event stream, `.beads-runner/runs/<run_id>/agent-<attempt>.ndjson`: opencode's
  `step_finish` events carry tokens (input, output, reasoning, cache read/write) and cost. The
  stream is written as the session goes, so a running, crashed or killed session counts too, and
  each step is counted on the UTC day its event is stamped with;
- the notes the process step writes when a session ends (`attempts.notes` in the engine's SQLite:
  `tokens`, `cost`), used for a session whose stream has no `step_finish` (another agent kind, a
  removed run directory, another engine).

A session is counted once: from its stream if that has any `step_finish`, else from its notes.
Everything here only reads; nothing needs the engine to be running.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from beads_runner.agent.base import TokenUsage
from beads_runner.agent.events import step_usage
from beads_runner.config import STATE_DB

PROCESS_STEP = "process"
BUDGET_EXCEEDED_MESSAGE = "daily budget spent: no new sessions start until tomorrow (UTC)"


def utc_day(ts: float) -> str:
    """`YYYY-MM-DD` of a Unix time, in UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def day_start(ts: float) -> float:
    """The Unix time of 00:00 UTC of the day containing `ts`."""
    d = datetime.fromtimestamp(ts, UTC)
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class Usage(TokenUsage):
    """Tokens, cost and steps of one session (or a sum of them): the agent's `TokenUsage` plus dollars."""

    cost: float = 0.0
    steps: int = 0  # step_finish events counted

    @property
    def tokens(self) -> int:
        """opencode's `total`."""
        return self.total

    def add(self, other: Usage) -> None:
        for name in type(self).model_fields:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": self.total, "input": self.input, "output": self.output, "reasoning": self.reasoning,
                "cache_read": self.cache_read, "cache_write": self.cache_write, "cost": round(self.cost, 6),
                "steps": self.steps}


@dataclass
class Session:
    """The agent sessions of one attempt of a run's process step (one `agent-<attempt>.ndjson`)."""

    run_id: str
    attempt: int
    source: str  # "events" (the ndjson stream), "notes" (the process step's notes) or "none"
    session_id: str | None = None
    started_at: float | None = None
    usage: Usage = field(default_factory=Usage)
    by_day: dict[str, Usage] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "attempt": self.attempt, "source": self.source,
                "session_id": self.session_id, "started_at": self.started_at, **self.usage.as_dict()}


def step_finish_usage(event: dict[str, Any]) -> Usage | None:
    """The tokens and cost of one opencode `step_finish` event (None for any other event)."""
    if not isinstance(event, dict) or event.get("type") != "step_finish":
        return None
    part = event.get("part") if isinstance(event.get("part"), dict) else {}
    tokens, cost = step_usage(part)  # the event's shape is known in one place: agent/events.py
    return Usage(**tokens.model_dump(), cost=cost, steps=1)


def event_time(event: dict[str, Any]) -> float | None:
    """An opencode event's time in Unix seconds (its `timestamp` is in milliseconds)."""
    stamp = event.get("timestamp") if isinstance(event, dict) else None
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and stamp > 0:
        return stamp / 1000.0 if stamp > 1e11 else float(stamp)
    return None


def usage_from_lines(lines: Iterable[str | bytes], fallback_ts: float) -> tuple[Usage, dict[str, Usage], str | None]:
    """Sum the `step_finish` events of a stream: (total, per UTC day, session id). Garbage is skipped;
    an event without a time counts on the day of `fallback_ts`."""
    total, by_day, session_id = Usage(), {}, None
    for raw in lines:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        raw = raw.strip()
        if not raw.startswith("{"):
            continue
        try:
            event = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            continue
        if not isinstance(event, dict):
            continue
        if session_id is None and isinstance(event.get("sessionID"), str):
            session_id = event["sessionID"]
        usage = step_finish_usage(event)
        if usage is None:
            continue
        total.add(usage)
        day = utc_day(event_time(event) or fallback_ts)
        by_day.setdefault(day, Usage()).add(usage)
    return total, by_day, session_id


# Parsed streams, by path: reused while the file is the same one, of the same size and change times (the budget is
# checked every few seconds; only the streams still being written are read again).
_parsed: dict[str, tuple[tuple[int, int, int, int, float | None], tuple[Usage, dict[str, Usage], str | None]]] = {}


def usage_from_file(path: Path, fallback_ts: float | None = None) -> tuple[Usage, dict[str, Usage], str | None]:
    """`usage_from_lines` of an ndjson file (a missing file is no usage)."""
    try:
        with path.open("rb") as fh:
            st = os.fstat(fh.fileno())
            fallback = fallback_ts if fallback_ts is not None else st.st_mtime
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, fallback)
            cached = _parsed.get(str(path))
            if cached is not None and cached[0] == stamp:
                return cached[1]
            result = usage_from_lines(fh, fallback)
    except OSError:
        return Usage(), {}, None
    _parsed[str(path)] = (stamp, result)
    return result


def _attempt_of(path: Path) -> int | None:
    stem = path.stem  # agent-<n>
    try:
        return int(stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


def read_process_attempts(state_dir: Path, run_id: str | None = None,
                          since: float | None = None) -> list[dict[str, Any]]:
    """The process attempts recorded by the embedded engine (read-only): run_id, step, attempt,
    started_at, finished_at, status, error, notes (a dict). Empty when there is no database."""
    from workflows.local import Store

    db = Path(state_dir) / STATE_DB
    if not db.exists():
        return []
    store = Store(db, read_only=True)  # the engine's own reader; read-only: asked every few seconds
    try:
        return [dict(t) for t in store.tries(PROCESS_STEP, run_id=run_id, since=since)]
    except sqlite3.Error:
        return []
    finally:
        store.close()


def sessions(state_dir: Path, *, run_id: str | None = None, since: float | None = None,
             attempts: list[dict[str, Any]] | None = None) -> list[Session]:
    """Every agent session (of one run, or of all), each counted once. With `since`, only sessions
    that spent something on or after the UTC day of that time, by the timestamps in their records
    (never by file times: a copied or restored file keeps its records' days); their by_day still covers
    all days.
    `attempts` (as from `read_process_attempts`) saves reading the database again."""
    state_dir = Path(state_dir)
    if attempts is None:
        attempts = read_process_attempts(state_dir, run_id=run_id, since=since)
    notes = {(a["run_id"], a["attempt"]): a for a in attempts}
    first_day = utc_day(since) if since is not None else ""
    runs_dir = state_dir / "runs"
    files: dict[tuple[str, int], Path] = {}
    if run_id is not None:
        dirs = [runs_dir / run_id]
    else:
        dirs = [d for d in runs_dir.iterdir() if d.is_dir()] if runs_dir.is_dir() else []
    for d in dirs:
        if not d.is_dir():
            continue
        for path in d.glob("agent-*.ndjson"):
            n = _attempt_of(path)
            if n is None:
                continue
            files[(d.name, n)] = path
    found: list[Session] = []
    for key in sorted(set(notes) | set(files)):
        run, attempt = key
        note = notes.get(key)
        started = note["started_at"] if note else None
        session = Session(run_id=run, attempt=attempt, source="none", started_at=started)
        if key in files:
            usage, by_day, sid = usage_from_file(files[key], fallback_ts=started)
            session.session_id = sid
            if usage.steps:
                session.source, session.usage, session.by_day = "events", usage, by_day
        if session.source == "none" and note and note["notes"]:
            n = note["notes"]
            usage = Usage(total=_int(n.get("tokens")), cost=_num(n.get("cost")))
            if usage.tokens or usage.cost:
                when = note["finished_at"] or note["started_at"] or time.time()
                session.source, session.usage, session.by_day = "notes", usage, {utc_day(when): usage}
        if note and note["notes"].get("session_id") and not session.session_id:
            session.session_id = note["notes"]["session_id"]
        if since is not None and not any(day >= first_day for day in session.by_day):
            continue  # spent nothing on or after the day of `since`, by the times its records carry
        found.append(session)
    return found


def run_usage(state_dir: Path, run_id: str,
              attempts: list[dict[str, Any]] | None = None) -> tuple[Usage, list[Session]]:
    """A run's total usage and its sessions (running ones included, as far as they got)."""
    found = sessions(state_dir, run_id=run_id, attempts=attempts)
    total = Usage()
    for s in found:
        total.add(s.usage)
    return total, found


def totals_by_day(state_dir: Path, since: float | None = None) -> dict[str, dict[str, Any]]:
    """Spending per UTC day, oldest first: {"YYYY-MM-DD": {"tokens", "cost", "steps", "sessions"}}.
    With `since` (Unix time), days before it are left out."""
    days: dict[str, Usage] = {}
    counts: dict[str, int] = {}
    first = utc_day(since) if since is not None else None
    for s in sessions(state_dir, since=since):
        for day, usage in s.by_day.items():
            if first is not None and day < first:
                continue
            days.setdefault(day, Usage()).add(usage)
            counts[day] = counts.get(day, 0) + 1
    return {day: {**days[day].as_dict(), "sessions": counts[day]} for day in sorted(days)}


def spent_today(state_dir: Path, now: float | None = None) -> float:
    """Dollars spent by agent sessions since 00:00 UTC (running sessions included)."""
    now = time.time() if now is None else now
    start = day_start(now)
    today = utc_day(now)
    total = 0.0
    for s in sessions(state_dir, since=start):
        usage = s.by_day.get(today)
        if usage is not None:
            total += usage.cost
    return round(total, 6)


def budget_status(budget: Any, state_dir: Path, now: float | None = None) -> tuple[float, float | None, bool]:
    """(spent today, the daily budget, exceeded). `budget` is dollars a UTC day (None: no budget,
    never exceeded; 0: nothing may be spent); a Config is accepted too, for its
    `agent.daily_budget_usd`. Exceeded (spent ≥ budget) means no new session should start until
    00:00 UTC."""
    if budget is not None and not isinstance(budget, (int, float)):
        budget = getattr(getattr(budget, "agent", None), "daily_budget_usd", None)
    spent = spent_today(state_dir, now=now)
    if budget is None:
        return spent, None, False
    return spent, float(budget), spent >= float(budget)
