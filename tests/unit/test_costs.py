"""Token and cost accounting: from opencode's event streams (running and crashed sessions too) and
from the process step's notes, by UTC day, against a daily budget."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from beads_runner import costs
from workflows.local import Store

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "opencode" / "run-success.events.ndjson"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


DAY1_LATE = ts("2026-11-20T23:59:59.500")
DAY2_EARLY = ts("2026-11-21T00:00:00.500")
DAY2_NOON = ts("2026-11-21T12:00:00")
DAY3_NOON = ts("2026-11-22T12:00:00")


def sample_events() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]


def stream(costs_and_times: list[tuple[float, float]], *, cache_read: int = 0) -> str:
    """The sample session, its step_finish events given (cost, time) in order; others get the time before."""
    events = sample_events()
    finishes = [e for e in events if e["type"] == "step_finish"]
    assert len(finishes) == len(costs_and_times) == 2
    pairs = iter(costs_and_times)
    when = costs_and_times[0][1]
    for e in events:
        if e["type"] == "step_finish":
            cost, when = next(pairs)
            e["part"]["cost"] = cost
            e["part"]["tokens"]["cache"]["read"] = cache_read
        e["timestamp"] = int(when * 1000)
    return "\n".join(json.dumps(e) for e in events) + "\n"


FILE_TIME = ts("2001-09-09T01:46:40")  # far from every record: a file's own time must never matter


def write_session(state: Path, run_id: str, attempt: int, text: str, file_time: float = FILE_TIME) -> Path:
    path = state / "runs" / run_id / f"agent-{attempt}.ndjson"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (file_time, file_time))
    return path


def record_tries(state: Path, *tries: tuple[str, str, int, float, dict]) -> None:
    """Finished runs whose steps' last tries carry these notes: (run id, step, try, ended at, notes),
    recorded through the state's owner as a history import (no SQL on its tables here)."""
    runs: dict[str, dict] = {}
    for run_id, step, attempt, at, notes in tries:
        run = runs.setdefault(run_id, {"id": run_id, "workflow": "task-flow", "key": run_id, "input": {},
                                       "status": "succeeded", "created_at": at - 10, "finished_at": at, "steps": []})
        run["finished_at"] = max(run["finished_at"], at)
        run["steps"].append({"name": step, "status": "succeeded", "attempt": attempt, "max_attempts": 3,
                             "timeout": 60, "started_at": at - 5, "finished_at": at, "notes": notes})
    state.mkdir(parents=True, exist_ok=True)
    Store(state / costs.STATE_DB).import_history(runs.values())


def test_a_stream_counts_each_step_on_its_own_utc_day(tmp_path):
    state = tmp_path / "state"
    write_session(state, "run-a", 1, stream([(0.30, DAY1_LATE), (0.70, DAY2_EARLY)], cache_read=5))
    [session] = costs.sessions(state)
    assert session.source == "events" and session.session_id and session.usage.steps == 2
    assert session.usage.tokens == 219 and session.usage.cache_read == 10
    assert session.usage.cost == pytest.approx(1.0)
    assert costs.spent_today(state, now=DAY2_NOON) == pytest.approx(0.70)
    assert costs.spent_today(state, now=DAY1_LATE) == pytest.approx(0.30)
    assert costs.spent_today(state, now=DAY3_NOON) == 0.0
    days = costs.totals_by_day(state)
    assert list(days) == ["2026-11-20", "2026-11-21"]
    assert days["2026-11-20"]["cost"] == pytest.approx(0.30) and days["2026-11-20"]["tokens"] == 109
    assert days["2026-11-21"]["cost"] == pytest.approx(0.70) and days["2026-11-21"]["tokens"] == 110
    assert list(costs.totals_by_day(state, since=DAY2_NOON)) == ["2026-11-21"]


def test_a_crashed_session_counts_what_it_finished(tmp_path):
    state = tmp_path / "state"
    text = stream([(0.25, DAY2_EARLY), (0.5, DAY2_EARLY)])
    lines = text.splitlines()
    cut = next(i for i, line in enumerate(lines) if '"step_finish"' in line) + 1
    partial = "\n".join(lines[:cut]) + "\n" + lines[cut][: len(lines[cut]) // 2]  # killed mid-line
    write_session(state, "run-crash", 1, partial)
    total, found = costs.run_usage(state, "run-crash")
    assert total.cost == pytest.approx(0.25) and total.tokens == 109 and found[0].source == "events"
    assert costs.spent_today(state, now=DAY2_NOON) == pytest.approx(0.25)


def test_notes_count_when_there_is_no_stream_and_a_session_is_never_counted_twice(tmp_path):
    state = tmp_path / "state"
    # run-1 try 1: stream and notes (the notes say the same thing): counted once, from the stream.
    write_session(state, "run-1", 1, stream([(0.1, DAY2_EARLY), (0.2, DAY2_EARLY)]))
    # run-2 try 1: a command agent, plain output only: its notes count, on the day it ended.
    write_session(state, "run-2", 1, "wrote work.txt\nnot json at all\n")
    record_tries(state,
                 ("run-1", "process", 1, DAY2_EARLY, {"session_id": "ses_1", "tokens": 219, "cost": 0.3}),
                 ("run-2", "process", 1, DAY2_NOON, {"session_id": "ses_2", "tokens": 1000, "cost": 2.0}),
                 # run-3: notes only (the run directory is gone), the day before.
                 ("run-3", "process", 1, DAY1_LATE, {"tokens": 50, "cost": 4.0}),
                 # Another step's notes are never a session.
                 ("run-3", "verify", 1, DAY2_NOON, {"tokens": 999, "cost": 99.0}))
    by_run = {s.run_id: s for s in costs.sessions(state)}
    assert set(by_run) == {"run-1", "run-2", "run-3"}
    assert by_run["run-1"].source == "events" and by_run["run-1"].usage.cost == pytest.approx(0.3)
    assert by_run["run-2"].source == "notes" and by_run["run-2"].session_id == "ses_2"
    assert by_run["run-3"].source == "notes"
    assert costs.spent_today(state, now=DAY2_NOON) == pytest.approx(2.3)
    days = costs.totals_by_day(state)
    assert days["2026-11-20"]["cost"] == pytest.approx(4.0) and days["2026-11-20"]["sessions"] == 1
    assert days["2026-11-21"]["cost"] == pytest.approx(2.3) and days["2026-11-21"]["sessions"] == 2
    assert days["2026-11-21"]["tokens"] == 219 + 1000


def test_budget_status_spent_against_budget_by_utc_day(tmp_path):
    state = tmp_path / "state"
    write_session(state, "run-a", 1, stream([(1.5, DAY1_LATE), (1.0, DAY2_EARLY)]))
    write_session(state, "run-b", 2, stream([(0.5, DAY2_EARLY), (0.5, DAY2_NOON)]))
    assert costs.budget_status(2.5, state, now=DAY2_NOON) == (pytest.approx(2.0), 2.5, False)
    assert costs.budget_status(2.0, state, now=DAY2_NOON) == (pytest.approx(2.0), 2.0, True)
    assert costs.budget_status(1.0, state, now=DAY1_LATE) == (pytest.approx(1.5), 1.0, True)
    assert costs.budget_status(1.0, state, now=DAY3_NOON) == (0.0, 1.0, False)  # a new UTC day
    assert costs.budget_status(None, state, now=DAY2_NOON) == (pytest.approx(2.0), None, False)
    config = SimpleNamespace(agent=SimpleNamespace(daily_budget_usd=1.99))
    assert costs.budget_status(config, state, now=DAY2_NOON)[2] is True
    unset = SimpleNamespace(agent=SimpleNamespace(daily_budget_usd=None))
    assert costs.budget_status(unset, state, now=DAY2_NOON)[1:] == (None, False)


def test_nothing_recorded_is_nothing_spent(tmp_path):
    assert costs.spent_today(tmp_path / "missing") == 0.0
    assert costs.totals_by_day(tmp_path / "missing") == {}
    assert costs.budget_status(0.01, tmp_path / "missing") == (0.0, 0.01, False)


@pytest.mark.parametrize("file_time", [FILE_TIME, ts("2030-01-01T00:00:00")], ids=["file-older", "file-newer"])
def test_days_come_from_the_records_never_from_the_file_time(tmp_path, file_time):
    """A stream copied, restored or written under a wrong clock keeps its records' days: the file's
    modification time neither hides a day's spending nor moves it to another day."""
    state = tmp_path / "state"
    write_session(state, "run-a", 1, stream([(0.30, DAY1_LATE), (0.70, DAY2_EARLY)]), file_time=file_time)
    assert costs.spent_today(state, now=DAY1_LATE) == pytest.approx(0.30)
    assert costs.spent_today(state, now=DAY2_NOON) == pytest.approx(0.70)
    assert costs.spent_today(state, now=DAY3_NOON) == 0.0
    assert list(costs.totals_by_day(state, since=DAY2_NOON)) == ["2026-11-21"]
    assert [s.run_id for s in costs.sessions(state, since=DAY2_NOON)] == ["run-a"]
    assert costs.sessions(state, since=DAY3_NOON) == []  # nothing spent on that day or after


def test_a_stream_still_being_written_is_read_again(tmp_path):
    state = tmp_path / "state"
    text = stream([(0.25, DAY2_EARLY), (0.5, DAY2_EARLY)])
    lines = text.splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"step_finish"' in line) + 1
    path = write_session(state, "run-live", 1, "".join(lines[:cut]))
    assert costs.spent_today(state, now=DAY2_NOON) == pytest.approx(0.25)
    with path.open("a") as fh:  # the session goes on: the same file grows
        fh.write("".join(lines[cut:]))
    os.utime(path, (FILE_TIME, FILE_TIME))
    assert costs.spent_today(state, now=DAY2_NOON) == pytest.approx(0.75)


def test_usage_is_the_agents_token_type_plus_dollars():
    from beads_runner.agent.base import TokenUsage

    a = costs.Usage(total=10, input=6, output=4, cost=0.5, steps=1)
    b = costs.Usage(total=5, cache_read=2, cost=0.25, steps=1)
    assert isinstance(a, TokenUsage)
    total = a + b
    assert (total.tokens, total.input, total.cache_read, total.cost, total.steps) == (15, 6, 2, 0.75, 2)
    a.add(b)
    assert a == total
    assert a.as_dict()["tokens"] == 15
