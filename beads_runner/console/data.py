"""What the console shows, as plain data, built from the code `status`, `explain`, `logs` and
`review` already use. The engine is asked only through the methods both engines have (`runs`,
`get_run`, `attempts`, `events`, `events_since`, `last_event_id`, `sessions_in_use`,
`active_run`, `dashboard_url`); everything else comes from the run directories and git.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from beads_runner import safe_text
from beads_runner.errors import RunnerError
from beads_runner.gitcmd import GitNotRun, GitStopped, run_git
from beads_runner.ids import is_safe_issue_id
from beads_runner.services import Services
from beads_runner.run_logs import describe_agent_event
from beads_runner.run_views import ACTIVE, FINISHED, PROCESS, _run_dict
from workflows.task_flow import SESSION_KEY, TASK_FLOW

STEPS = tuple(s.name for s in TASK_FLOW.steps)  # check-deps, process, verify, commit
# The groups of the runs list (`?group=`): engine statuses to ask for.
GROUPS: dict[str, tuple[str, ...] | None] = {"all": None, "active": ACTIVE, "finished": FINISHED,
                                             "failed": ("failed", "failing"), "succeeded": ("succeeded",)}
MAX_LIMIT = 100  # a page of runs; more at once would grow the daemon's heap for little use
TRANSCRIPT_EVENTS = 400  # per session: the last ones (a long session can write thousands)
TAIL_BYTES = 16_000  # of each gate log, and of the diff (x8)
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def dashboard(engine, run_id: str) -> str | None:
    fn = getattr(engine, "dashboard_url", None)
    return fn(run_id) if fn is not None else None


def run_row(engine, svc: Services, run, now: float) -> dict[str, Any]:
    """One run as the lists show it: `status --json`'s run, less its bulky parts, plus links."""
    d = _run_dict(engine, run, svc.state_dir, now)
    d.pop("sessions", None)
    d.pop("outcome", None)
    d["dashboard_url"] = dashboard(engine, run.id)
    return d


def list_runs(engine, svc: Services, *, group: str = "all", issue: str | None = None, limit: int = 50,
              before: float | None = None, now: float | None = None, lazy: bool = False) -> dict[str, Any]:
    """The newest `limit` runs of a group (or of one issue) created before `before` (none: the
    newest): the engine's own query, newest first. `older` is the cursor of the next page (the
    oldest run's created_at), None when this page is the last. With `lazy`, `runs` is a generator:
    each row is made as it is encoded (`api.PiecewiseJSON`), so a page's rows never all exist at once."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}: one of {', '.join(GROUPS)}")
    if issue is not None and not is_safe_issue_id(issue):
        raise ValueError(f"issue id {issue!r} is not a valid issue id")
    limit = max(1, min(int(limit), MAX_LIMIT))
    now = time.time() if now is None else now
    if before is not None and not (isinstance(before, (int, float)) and before > 0):
        raise ValueError(f"before {before!r} is not a time: give a run's created_at (the page's `older`)")
    page = {"runs": [], "limit": limit, "group": group, "before": before, "older": None}
    if engine is None:
        return page
    # One more than shown: whether an older page exists, without a count over the history.
    runs = engine.runs(statuses=GROUPS[group], limit=limit + 1, key=issue, before=before)
    rows = (run_row(engine, svc, r, now) for r in runs[:limit])
    page["runs"] = rows if lazy else list(rows)
    if len(runs) > limit:
        page["older"] = runs[limit - 1].created_at
    return page


def now_view(engine, svc: Services, *, recent: int = 10, handed_over: int = 30) -> dict[str, Any]:
    """The Now page, with `status --json`'s keys: running, queued (waiting for a slot), blocked (with a
    person: the latest run of each issue, if it failed), parked, recent, sessions, spending. Built
    from status' own pieces, over bounded lists (the console lives in the daemon: small reads)."""
    from beads_runner.explain import queue_positions
    from beads_runner.parking import parks_in_effect
    from beads_runner.run_views import _spending

    now = time.time()
    out: dict[str, Any] = {"repo": str(svc.repo), "generated_at": round(now, 3), "sessions": sessions(engine, svc),
                           "spending": _spending(svc, now), "parked": [], "running": [], "queued": [],
                           "blocked": [], "recent": []}
    if engine is None:
        out["waiting"] = []
        return out
    parks = parks_in_effect(svc.config, svc.state_dir, now) if hasattr(engine, "db_path") else []
    out["parked"] = [p.as_dict() for p in parks]
    positions = queue_positions(engine)

    def row(run) -> dict[str, Any]:
        d = _run_dict(engine, run, svc.state_dir, now, parks=parks, positions=positions)
        d.pop("sessions", None)
        d["dashboard_url"] = dashboard(engine, run.id)
        return d

    for run in engine.runs(statuses=ACTIVE, limit=1000):
        d = row(run)
        out[d["phase"] if d["phase"] in ("running", "queued", "blocked") else "running"].append(d)
    seen: set[str] = set()
    for run in engine.runs(statuses=("failed",), limit=handed_over):
        if run.key in seen:
            continue
        seen.add(run.key)
        newest = engine.runs(key=run.key, limit=1)
        if newest and newest[0].id == run.id:
            out["blocked"].append(row(run))
    out["recent"] = [row(r) for r in engine.runs(statuses=FINISHED, limit=recent)]
    out["running"].reverse()
    out["queued"].reverse()
    out["waiting"] = [r for r in out["queued"] if r["reason"]["code"] == "waiting_for_session"]
    return out


def _safe_run_id(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id or "") or ".." in run_id:
        raise ValueError(f"{run_id!r} is not a run id")
    return run_id


def _tail(path: Path, limit: int = TAIL_BYTES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return ("…\n" if size > limit else "") + safe_text.printable(text, keep_newlines=True)


def transcript(run_dir: Path) -> list[dict[str, Any]]:
    """Each agent session of the run (agent-<n>.ndjson): its messages, tool calls and step ends."""
    sessions = []
    for path in sorted(run_dir.glob("agent-*.ndjson"), key=lambda p: p.name):
        items = []
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for raw in lines[-TRANSCRIPT_EVENTS:]:
            try:
                event = json.loads(raw)
            except json.JSONDecodeError:
                event = {"type": "output", "text": raw}
            if not isinstance(event, dict):
                continue
            kind = str(event.get("type") or "event")
            items.append({"kind": kind, "text": describe_agent_event(event),
                          "ts": event.get("timestamp")})
        sessions.append({"file": path.name, "events": items, "truncated": len(lines) > TRANSCRIPT_EVENTS})
    return sessions


def gate_report(run, run_dir: Path) -> dict[str, Any]:
    """The gates' verdicts (from the verify or process step's output) and each gate's log tail."""
    reports: list[dict[str, Any]] = []
    for name in ("verify", PROCESS):
        step = next((s for s in run.steps if s.name == name and s.output), None)
        if step is None:
            continue
        report = step.output.get("report") if name == "verify" else step.output.get("gate_report")
        if report and report.get("reports"):
            reports = [{k: g.get(k) for k in ("name", "status", "duration_s", "exit_code", "reason", "findings")}
                       for g in report["reports"]]
            break
    logs = [{"name": p.stem.removeprefix("gate-"), "tail": _tail(p)} for p in sorted(run_dir.glob("gate-*.log"))]
    return {"gates": reports, "logs": logs}


def diff(svc: Services, run) -> dict[str, Any]:
    """The landed commit's patch, or (not landed) the kept branch against the target."""
    sha = (run.outcome or {}).get("sha")
    ws = svc.workspace
    if sha and re.fullmatch(r"[0-9a-f]{7,64}", sha):
        args, what = ["show", "--stat", "--patch", "--format=commit %H%n%an  %aI%n%n%B", sha], f"commit {sha[:10]}"
    elif is_safe_issue_id(run.key):
        branch = ws.branch(run.key)
        args, what = ["diff", "--stat", "--patch", f"{ws.target}...{branch}", "--"], f"{ws.target}...{branch}"
    else:
        return {"what": None, "text": ""}
    try:
        result = run_git(args, cwd=svc.repo, timeout=30)
    except (GitNotRun, GitStopped):
        return {"what": what, "text": ""}
    if not result.ok:
        return {"what": what, "text": ""}
    text = full = result.stdout.decode("utf-8", "replace")
    limit = TAIL_BYTES * 8
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(full) - limit} more characters: git {' '.join(args[:1])} " \
                              f"{what})"
    return {"what": what, "text": safe_text.printable(text, keep_newlines=True)}


def run_detail(engine, svc: Services, run_id: str, *, after_event: int = 0) -> dict[str, Any] | None:
    """Everything about one run: steps (as the graph's nodes), tries, events, transcript, gates,
    diff, commit and close reason."""
    _safe_run_id(run_id)
    run = engine.get_run(run_id) if engine is not None else None
    if run is None:
        return None
    now = time.time()
    d = _run_dict(engine, run, svc.state_dir, now)
    steps = {s.name: s for s in run.steps}
    d["steps"] = [{"name": name, "status": steps[name].status if name in steps else "pending",
                   "attempt": steps[name].attempt if name in steps else 0,
                   "max_attempts": steps[name].max_attempts if name in steps else None,
                   "error": steps[name].error if name in steps else None,
                   "started_at": steps[name].started_at if name in steps else None,
                   "finished_at": steps[name].finished_at if name in steps else None}
                  for name in STEPS]
    run_dir = svc.state_dir / "runs" / run.id
    d["events"] = engine.events(run.id, after_id=after_event)
    d["transcript"] = transcript(run_dir) if run_dir.is_dir() else []
    d["gate_report"] = gate_report(run, run_dir)
    d["diff"] = diff(svc, run)
    d["close_reason"] = (run.outcome or {}).get("close_reason") or None
    d["cancel_requested"] = getattr(run, "cancel_requested", None)
    d["dashboard_url"] = dashboard(engine, run.id)
    return d


def issue_detail(engine, svc: Services, issue_id: str) -> dict[str, Any]:
    """`explain` for the issue and every run of it, newest first."""
    from beads_runner.explain import explain

    if not is_safe_issue_id(issue_id):
        raise ValueError(f"issue id {issue_id!r} is not a valid issue id")
    try:
        reason = explain(svc, issue_id, engine=engine).as_dict()
    except RunnerError as exc:
        raise LookupError(exc.render()) from None
    now = time.time()
    runs = engine.runs(key=issue_id, limit=200) if engine is not None else []
    return {"issue_id": issue_id, "explain": reason, "runs": [run_row(engine, svc, r, now) for r in runs]}


def sessions(engine, svc: Services) -> dict[str, int]:
    in_use = engine.sessions_in_use(SESSION_KEY) if engine is not None else 0
    return {"in_use": in_use, "cap": svc.config.engine.max_sessions}
