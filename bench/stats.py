"""Statistics of the benchmarks: percentiles and summaries, and how busy the session slots were."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Iterable[float]) -> dict[str, float]:
    data = [float(v) for v in values]
    if not data:
        return {"n": 0}
    return {"n": len(data), "p50": statistics.median(data), "p95": percentile(data, 95),
            "mean": statistics.fmean(data), "min": min(data), "max": max(data)}


def busy_share(sessions: Sequence[tuple[float, float]], waiting: Sequence[tuple[float, float]], slots: int,
               start: float | None = None, end: float | None = None) -> dict[str, float]:
    """How much of the time work waits (some waiting interval covers it) all `slots` sessions are busy.

    Returns seconds with work waiting, seconds of those with every slot busy, their share, and the
    share of the whole span [start, end] with every slot busy."""
    points = sorted({p for a, b in [*sessions, *waiting] for p in (a, b)})
    if start is None:
        start = points[0] if points else 0.0
    if end is None:
        end = points[-1] if points else 0.0
    points = sorted({start, end, *[p for p in points if start < p < end]})
    waiting_s = full_waiting_s = full_s = 0.0
    for a, b in zip(points, points[1:], strict=False):
        mid = (a + b) / 2
        busy = sum(1 for s, e in sessions if s <= mid < e)
        waits = any(s <= mid < e for s, e in waiting)
        width = b - a
        if busy >= slots:
            full_s += width
        if waits:
            waiting_s += width
            if busy >= slots:
                full_waiting_s += width
    span = max(end - start, 0.0)
    return {"waiting_s": waiting_s, "full_while_waiting_s": full_waiting_s,
            "share_full_while_waiting": full_waiting_s / waiting_s if waiting_s else float("nan"),
            "span_s": span, "share_full_of_span": full_s / span if span else float("nan")}


def turnover(intervals: Sequence[tuple[float, float]], slots: int) -> list[float]:
    """For each interval that starts while `slots - 1` others run (a slot had just freed): the time
    since the latest interval end before its start — how long a freed slot stayed empty."""
    gaps = []
    for a, _b in intervals:
        others = sum(1 for s, e in intervals if s < a < e)
        ends = [e for _s, e in intervals if e <= a]
        if others == slots - 1 and ends:
            gaps.append(a - max(ends))
    return gaps


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    points = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda p: (p[0], p[1]))
    best = now = 0
    for _, delta in points:
        now += delta
        best = max(best, now)
    return best


def in_ms(s: dict[str, float]) -> dict[str, float]:
    """A `summary` of seconds, in milliseconds."""
    return {k: (v * 1000 if k != "n" else v) for k, v in s.items()}


def between(a: float | None, b: float | None) -> float | None:
    """b - a, or None if either is unknown."""
    return None if a is None or b is None else b - a
