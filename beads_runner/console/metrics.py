"""The console's numbers: landings and handovers per UTC day, success rate, step durations
(p50/p95), sessions in use over time and cost per UTC day; as data for the charts and in
Prometheus' text exposition format for `/metrics`.

Everything is computed from the engine's finished runs (their steps' times) and `beads_runner.costs`,
over the last `DAYS` days, and kept for `TTL` seconds: a scrape every few seconds costs one query.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from beads_runner import costs
from beads_runner.services import Services
from beads_runner.run_views import ACTIVE, FINISHED, PROCESS, _phase
from workflows.task_flow import SESSION_KEY

DAYS = 14
HISTORY = 5000  # finished runs looked at, newest first
TTL = 10.0
BUCKETS = 48  # sessions over the last 24 hours: one sample every 30 minutes


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    pos = q * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return round(values[lo] + (values[hi] - values[lo]) * (pos - lo), 3)


def compute(engine, svc: Services, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    first_day = costs.utc_day(now - (DAYS - 1) * 86400)
    days = [costs.utc_day(now - (DAYS - 1 - n) * 86400) for n in range(DAYS)]
    per_day = {d: {"landed": 0, "handed_over": 0} for d in days}
    durations: dict[str, list[float]] = {}
    intervals: list[tuple[float, float]] = []
    totals = {"landed": 0, "handed_over": 0, "other": 0}
    finished = engine.runs(statuses=FINISHED, limit=HISTORY) if engine is not None else []
    active = engine.runs(statuses=ACTIVE, limit=1000) if engine is not None else []
    for run in finished:
        phase = _phase(run)
        day = costs.utc_day(run.finished_at or run.updated_at)
        kind = "landed" if phase == "landed" else "handed_over" if run.status == "failed" else "other"
        totals[kind] += 1
        if day >= first_day and kind != "other" and day in per_day:
            per_day[day][kind] += 1
    for run in [*finished, *active]:
        for s in run.steps:
            if s.started_at and s.finished_at and s.status == "succeeded":
                durations.setdefault(s.name, []).append(s.finished_at - s.started_at)
            if s.name == PROCESS and s.started_at and (s.finished_at or s.status == "running"):
                intervals.append((s.started_at, s.finished_at or now))
    decided = totals["landed"] + totals["handed_over"]
    samples = []
    for n in range(BUCKETS):
        at = now - (BUCKETS - 1 - n) * (86400 / BUCKETS)
        samples.append({"at": round(at), "in_use": sum(1 for a, b in intervals if a <= at <= b)})
    spend = costs.totals_by_day(svc.state_dir, since=now - (DAYS - 1) * 86400)
    return {
        "generated_at": round(now, 3),
        "days": [{"day": d, **per_day[d], "cost_usd": round(spend.get(d, {}).get("cost", 0.0), 6),
                  "tokens": spend.get(d, {}).get("tokens", 0)} for d in days],
        "totals": totals,
        "success_rate": round(totals["landed"] / decided, 4) if decided else None,
        "step_durations": {name: {"p50": _quantile(v, 0.5), "p95": _quantile(v, 0.95), "count": len(v)}
                           for name, v in sorted(durations.items())},
        "sessions": {"in_use": engine.sessions_in_use(SESSION_KEY) if engine is not None else 0,
                     "cap": svc.config.engine.max_sessions, "over_time": samples},
        "runs": {"active": len(active), "finished_looked_at": len(finished)},
    }


class Metrics:
    """`compute`, kept for TTL seconds (one computation at a time).

    With `in_child` (the console inside the daemon), the numbers are computed by a short-lived child
    process (`python -m beads_runner.console.metrics --repo R`): reading a thousand runs would
    otherwise leave the daemon's heap megabytes bigger for good (freed, but not given back)."""

    def __init__(self, ttl: float = TTL, *, in_child: bool = False):
        self.ttl = ttl
        self.in_child = in_child
        self._lock = threading.Lock()
        self._at = -1e9
        self._data: dict[str, Any] | None = None
        self._alock = None  # asyncio.Lock of from_child, made on the event loop

    def get(self, engine, svc: Services) -> dict[str, Any]:
        with self._lock:
            if self._data is None or time.monotonic() - self._at >= self.ttl:
                self._data = _in_child(svc) if self.in_child else compute(engine, svc)
                self._at = time.monotonic()
            return self._data

    async def from_child(self, svc: Services) -> dict[str, Any]:
        """`get` with `in_child`, awaited on the event loop: the child is waited for without a
        thread (no worker thread in the daemon for it)."""
        import asyncio

        if self._alock is None:
            self._alock = asyncio.Lock()
        async with self._alock:
            if self._data is None or time.monotonic() - self._at >= self.ttl:
                self._data = await _in_child_async(svc)
                self._at = time.monotonic()
            return self._data

    def invalidate(self) -> None:
        self._at = -1e9


CHILD_TIMEOUT = 120.0  # seconds the metrics child may take


def _child_command(svc: Services) -> list[str]:
    import sys

    return [sys.executable, "-m", "beads_runner.console.metrics", "--repo", str(svc.repo)]


def _child_answer(returncode: int, out: str, err: str) -> dict[str, Any]:
    import json

    from beads_runner.errors import RunnerError

    if returncode != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise RunnerError(f"the metrics could not be computed: {last}", fix="see the runner's log; try again")
    return json.loads(out)


def _in_child(svc: Services) -> dict[str, Any]:
    import subprocess

    proc = subprocess.run(_child_command(svc), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=CHILD_TIMEOUT, check=False)
    return _child_answer(proc.returncode, proc.stdout, proc.stderr)


async def _in_child_async(svc: Services) -> dict[str, Any]:
    """The child, its output in temporary files (no pipe to drain), polled from the event loop:
    asyncio's own subprocess support would wait for it on a watcher thread (Python 3.11)."""
    import asyncio
    import subprocess
    import tempfile

    from beads_runner.errors import RunnerError

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(_child_command(svc), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + CHILD_TIMEOUT
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RunnerError(f"the metrics took more than {CHILD_TIMEOUT:.0f} s",
                                  fix="see the runner's log; try again")
            await asyncio.sleep(0.05)
        out.seek(0)
        err.seek(0)
        return _child_answer(proc.returncode, out.read().decode("utf-8", "replace"),
                             err.read().decode("utf-8", "replace"))


def main(argv: list[str] | None = None) -> int:
    """The child of `Metrics(in_child=True)`: the numbers of one repository, as JSON on stdout."""
    import argparse
    import json
    from pathlib import Path

    from beads_runner.config import load_config
    from beads_runner.services import register_services
    from beads_runner.run_views import _engine

    ap = argparse.ArgumentParser(prog="python -m beads_runner.console.metrics")
    ap.add_argument("--repo", required=True)
    repo = Path(ap.parse_args(argv).repo)
    svc = register_services(Services(repo, load_config(repo)))
    print(json.dumps(compute(_engine(svc), svc)))
    return 0

def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus(data: dict[str, Any]) -> str:
    """The same numbers in Prometheus' text format (version 0.0.4)."""
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, rows: list[tuple[dict[str, str], float | None]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in rows:
            if value is None:
                continue
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

    t = data["totals"]
    metric("beads_runner_runs_landed", "gauge", "Runs that landed, of the finished runs looked at.",
           [({}, t["landed"])])
    metric("beads_runner_runs_handed_over", "gauge", "Runs handed to a person, of the finished runs looked at.",
           [({}, t["handed_over"])])
    metric("beads_runner_success_ratio", "gauge", "Landed / (landed + handed over).", [({}, data["success_rate"])])
    metric("beads_runner_landings_per_day", "gauge", "Runs landed per UTC day.",
           [({"day": d["day"]}, d["landed"]) for d in data["days"]])
    metric("beads_runner_handovers_per_day", "gauge", "Runs handed to a person per UTC day.",
           [({"day": d["day"]}, d["handed_over"]) for d in data["days"]])
    metric("beads_runner_cost_usd_per_day", "gauge", "Dollars spent by agent sessions per UTC day.",
           [({"day": d["day"]}, d["cost_usd"]) for d in data["days"]])
    rows = []
    for step, q in data["step_durations"].items():
        rows += [({"step": step, "quantile": "0.5"}, q["p50"]), ({"step": step, "quantile": "0.95"}, q["p95"])]
    metric("beads_runner_step_duration_seconds", "gauge", "Succeeded step durations (quantiles).", rows)
    s = data["sessions"]
    metric("beads_runner_sessions_in_use", "gauge", "Agent sessions running now.", [({}, s["in_use"])])
    metric("beads_runner_sessions_cap", "gauge", "engine.max_sessions.", [({}, s["cap"])])
    metric("beads_runner_runs_active", "gauge", "Runs not finished.", [({}, data["runs"]["active"])])
    return "\n".join(out) + "\n"


def bar_chart(values: list[tuple[str, float]], *, width: int = 560, height: int = 140, unit: str = "") -> str:
    """A small inline SVG bar chart (no script, no external file)."""
    from html import escape

    if not values:
        return '<p class="muted">no data</p>'
    top = max((v for _, v in values), default=0) or 1
    bw = width / len(values)
    bars = []
    for n, (label, v) in enumerate(values):
        h = (height - 20) * (v / top)
        x = n * bw
        bars.append(f'<rect x="{x + 2:.1f}" y="{height - 16 - h:.1f}" width="{max(bw - 4, 1):.1f}" '
                    f'height="{h:.1f}"><title>{escape(label)}: {v:g}{escape(unit)}</title></rect>')
        if len(values) <= 16 or n % max(1, len(values) // 8) == 0:
            bars.append(f'<text x="{x + bw / 2:.1f}" y="{height - 3}" text-anchor="middle">{escape(label)}</text>')
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" width="{width}" height="{height}">'
            f'<text x="2" y="10" class="max">{top:g}{escape(unit)}</text>{"".join(bars)}</svg>')


if __name__ == "__main__":
    raise SystemExit(main())
