"""The Hatchet engine's own record of a benchmark's runs, in the shape of bench.rig.read_runs (per issue,
its latest run: created/finished and every step's times), and the dispatch gaps between steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from beads_runner.environ import environment
from bench.stats import between

ROWS = (("embedded", 0), ("hatchet", 1), ("hatchet", 2))
STEPS = ("check-deps", "process", "verify", "commit")


def row_name(kind: str, workers: int) -> str:
    return "embedded" if kind == "embedded" else f"hatchet/{workers}"


def row_label(kind: str, workers: int) -> str:
    return "embedded engine (SQLite)" if kind == "embedded" else \
        f"Hatchet, {workers} worker{'s' if workers > 1 else ''}"


def _ts(value: Any) -> float | None:
    if value is None or value.year < 2000:  # Hatchet sends year 1 for "never"
        return None
    return value.timestamp()


def _task_name(display_name: str) -> str:
    head, _, tail = (display_name or "").rpartition("-")
    return head if tail.isdigit() else display_name  # "check-deps-1796090831507" → "check-deps"


def hatchet_runs(repo: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per issue (its latest run), from the Hatchet engine, in read_runs's shape: created (the trigger, when
    the root task was inserted) and finished, each step's times as the engine reports them (task
    started_at = its STARTED event, finished_at), the outputs, the worker, and each step's task events
    (QUEUED, ASSIGNED, SENT_TO_WORKER, STARTED, FINISHED). Hatchet keeps a task's count of tries, not each
    one, so a step's `first_start` is its last try's start (retries are counted)."""
    from beads_runner.config import load_config
    from beads_runner.services import Services
    from workflows.hatchet import hatchet_engine

    with environment({k: v for k, v in env.items() if k.startswith("HATCHET_CLIENT_")}):
        engine = hatchet_engine(Services(repo, load_config(repo)))
        out: dict[str, dict[str, Any]] = {}
        for view in sorted(engine.runs(limit=500), key=lambda v: v.created_at):
            details = engine.hatchet.runs.get(view.id)
            run = details.run
            status = {"COMPLETED": "succeeded", "FAILED": "failed", "CANCELLED": "failed"}.get(
                getattr(run.status, "value", str(run.status)), "running")
            info: dict[str, Any] = {"run_id": view.id, "status": status, "created": _ts(run.metadata.created_at),
                                    "run_created_at": _ts(run.created_at), "finished": _ts(run.finished_at),
                                    "steps": {}, "retries": 0, "workers": set()}
            for t in details.tasks or []:
                name = _task_name(t.display_name)
                if name not in STEPS or _ts(t.started_at) is None:
                    continue
                info["steps"][name] = {"first_start": _ts(t.started_at), "start": _ts(t.started_at),
                                       "end": _ts(t.finished_at), "inserted": _ts(t.task_inserted_at),
                                       "status": str(t.status), "notes": {}, "output": dict(t.output or {}) or None,
                                       "events": {}}
                info["retries"] += max(0, (t.attempt or 1) - 1)
            for ev in details.task_events or []:
                step = info["steps"].get(_task_name(ev.task_display_name or ""))
                if step is None:
                    continue
                kind = getattr(ev.event_type, "value", str(ev.event_type))
                step["events"].setdefault(kind, _ts(ev.timestamp))  # newest first: keep the last try's
                if ev.worker_id:
                    info["workers"].add(ev.worker_id)
            proc = (info["steps"].get("process") or {}).get("output") or {}
            ver = (info["steps"].get("verify") or {}).get("output") or {}
            # No stored events on Hatchet: verify reused the fix loop's gates iff it reports exactly them.
            info["verify_cached"] = bool(proc.get("gate_report")) and ver.get("report") == proc.get("gate_report")
            if status == "succeeded" and (info["steps"].get("commit") or {}).get("end"):
                info["landed"] = info["steps"]["commit"]["end"]  # closed just before: a late bound
            out[view.key] = info  # oldest first, so the newest run of an issue stays
        return out


def engine_dispatch(runs: dict[str, dict[str, Any]], ids: list[str],
                    children: tuple[str, ...] = STEPS[1:]) -> dict[str, list[float]]:
    """The engine's own dispatch of each step after the first, from its task events: the parent's
    FINISHED → the task inserted → QUEUED → ASSIGNED (to a worker slot) → SENT_TO_WORKER → STARTED (the
    worker's acknowledgement). Steps held back by the session cap (process) wait between QUEUED and
    ASSIGNED: under load, leave it out of `children`."""
    segs: dict[str, list[float]] = {"parent finished→task inserted": [], "inserted→queued": [],
                                    "queued→assigned": [], "assigned→sent to worker": [],
                                    "sent to worker→started": []}
    for issue_id in ids:
        run = runs.get(issue_id)
        if not run or run["status"] != "succeeded":
            continue
        for parent, child in zip(STEPS, STEPS[1:], strict=False):
            if child not in children:
                continue
            p, c = run["steps"].get(parent) or {}, run["steps"].get(child) or {}
            ev = c.get("events") or {}
            chain = [("parent finished→task inserted", p.get("end"), c.get("inserted")),
                     ("inserted→queued", c.get("inserted"), ev.get("QUEUED")),
                     ("queued→assigned", ev.get("QUEUED"), ev.get("ASSIGNED")),
                     ("assigned→sent to worker", ev.get("ASSIGNED"), ev.get("SENT_TO_WORKER")),
                     ("sent to worker→started", ev.get("SENT_TO_WORKER"), ev.get("STARTED"))]
            for name, x, y in chain:
                value = between(x, y)
                if value is not None:
                    segs[name].append(value)
    return segs


def step_gaps(runs: dict[str, dict[str, Any]], ids: list[str], *, include_cap_wait: bool) -> dict[str, list[float]]:
    """Seconds between one step's end and the next one's start (and submit → first step), per pair."""
    gaps: dict[str, list[float]] = {"submitted→check-deps": [], "check-deps→process": [], "process→verify": [],
                                    "verify→commit": []}
    for issue_id in ids:
        run = runs.get(issue_id)
        if not run or run["status"] != "succeeded":
            continue
        st = run["steps"]
        pairs = [("submitted→check-deps", run["created"], st.get("check-deps", {}).get("first_start"))]
        for a, b in zip(STEPS, STEPS[1:], strict=False):
            if a == "check-deps" and not include_cap_wait:
                continue  # under load that gap is the queue behind the session cap, not dispatch
            pairs.append((f"{a}→{b}", st.get(a, {}).get("end"), st.get(b, {}).get("first_start")))
        for name, x, y in pairs:
            value = between(x, y)
            if value is not None:
                gaps[name].append(value)
    return gaps
