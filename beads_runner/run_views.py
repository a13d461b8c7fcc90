"""What ran, what runs and what landed, as plain data: the runs of an engine, with their steps,
tries, agent sessions, tokens and cost (`status --json`, the console). Rendering for people is in
`status`, the run's log lines in `run_logs`, landed commits in `review`.

Everything here reads: the engine (`workflows.engine.Engine`), the run directories
(`.beads-runner/runs/<run_id>/agent-<attempt>.ndjson`, `gate-<name>.log`) and `git log` of the
target. Tokens and cost come from `beads_runner.costs`, so running and crashed sessions count.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from beads_runner import costs, safe_text
from beads_runner.logs import short_run_id
from beads_runner.services import Services
from workflows.engine import ACTIVE, FAILED, FAILING, FINISHED, PENDING, QUEUED, SUCCEEDED, Engine, RunView, \
    existing_engine
from workflows.task_flow import SESSION_KEY, did_no_work

PROCESS = "process"


def _engine(svc: Services) -> Engine | None:
    """The engine whose runs to read (None: the embedded engine has recorded nothing yet)."""
    return existing_engine(svc)


def one_line(text: Any, limit: int = 160) -> str:
    return safe_text.one_line(text, limit)  # no control characters: titles and reasons are untrusted


# --- runs as data ----------------------------------------------------------------------------------
def _title(run: RunView) -> str | None:
    for s in run.steps:
        if s.name == "check-deps" and s.output:
            issue = s.output.get("issue") or {}
            return issue.get("title") or None
    return None


def _phase(run: RunView) -> str:
    """running | queued | blocked | landed | skipped | superseded | failed | cancelled.

    queued: active, its process step not started (check-deps, or waiting for a session);
    blocked: failed (or being handed to a person right now);
    superseded: a person closed, took, deferred or deleted the issue mid-run; nothing landed."""
    if run.status == FAILING:
        return "blocked"
    if run.status in ACTIVE:
        proc = next((s for s in run.steps if s.name == PROCESS), None)
        if proc is not None and proc.status == PENDING and proc.attempt == 0:
            return "queued"
        if proc is None and run.status == QUEUED:
            return "queued"
        return "running"
    if run.status == SUCCEEDED:
        outcome = run.outcome or {}
        if outcome.get("superseded"):
            return "superseded"
        return "skipped" if did_no_work(outcome) else "landed"
    return run.status


def _run_dict(engine: Engine, run: RunView, state_dir: Path, now: float | None = None, *,
              parks: list | None = None, positions: dict[str, int] | None = None) -> dict[str, Any]:
    from beads_runner.explain import run_reason

    now = time.time() if now is None else now
    current = run.current_step
    attempts = engine.attempts(run.id)
    process_attempts = [{"run_id": run.id, "attempt": a["attempt"], "started_at": a["started_at"],
                         "finished_at": a["finished_at"], "status": a["status"], "error": a["error"],
                         "notes": a["notes"] or {}} for a in attempts if a["step"] == PROCESS]
    usage, sessions = costs.run_usage(state_dir, run.id, attempts=process_attempts)
    end = run.finished_at or now
    active = run.status in ACTIVE
    step = current if active else None
    return {
        "run_id": run.id,
        "run": short_run_id(run.id),
        "issue_id": run.key,
        "title": _title(run),
        "status": run.status,
        "phase": _phase(run),
        "step": step.name if step else None,
        "step_status": step.status if step else None,
        "attempt": step.attempt if step else None,
        "max_attempts": step.max_attempts if step else None,
        "retry_at": step.not_before if step and step.status == PENDING and step.not_before > now else None,
        "elapsed_s": round(end - run.created_at, 1),
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "failed_step": run.failed_step,
        "error": run.error,
        "outcome": run.outcome,
        "commit": (run.outcome or {}).get("sha") or None,
        "steps": [{"name": s.name, "status": s.status, "attempt": s.attempt, "max_attempts": s.max_attempts,
                   "error": s.error} for s in run.steps],
        "attempts": [{"step": a["step"], "attempt": a["attempt"], "status": a["status"], "error": a["error"],
                      "started_at": a["started_at"], "finished_at": a["finished_at"]} for a in attempts],
        "sessions": [s.as_dict() for s in sessions],
        "tokens": usage.tokens,
        "cost": round(usage.cost, 6),
        # the same reason codes as `explain` (from the engine alone)
        "reason": run_reason(run, now=now, parks=parks, queue_position=(positions or {}).get(run.id)).as_dict(),
        "handover_recorded_locally": bool(getattr(run, "handler_error", None)),
    }


def _failures(engine: Engine, runs: list[RunView], limit: int) -> list[dict[str, Any]]:
    found, seen = [], set()
    for run in runs:
        if run.id in seen:
            continue
        seen.add(run.id)
        attempts = engine.attempts(run.id)
        last = {}
        for a in attempts:
            last[a["step"]] = max(last.get(a["step"], 0), a["attempt"])
        for a in attempts:
            if a["status"] != FAILED:
                continue
            final = (run.status in (FAILED, FAILING) and run.failed_step == a["step"]
                     and a["attempt"] == last[a["step"]])
            found.append({"issue_id": run.key, "run_id": run.id, "run": short_run_id(run.id), "step": a["step"],
                          "attempt": a["attempt"], "at": a["finished_at"] or a["started_at"],
                          "reason": one_line(a["error"]), "final": final})
    found.sort(key=lambda f: f["at"] or 0, reverse=True)
    return found[:limit]


def _spending(svc: Services, now: float | None = None, budget: float | None = None) -> dict[str, Any]:
    if budget is None:
        budget = getattr(svc.config.agent, "daily_budget_usd", None)
    spent, budget, exceeded = costs.budget_status(budget, svc.state_dir, now=now)
    return {"day": costs.utc_day(time.time() if now is None else now), "spent_usd": spent, "budget_usd": budget,
            "exceeded": exceeded, "message": costs.BUDGET_EXCEEDED_MESSAGE if exceeded else None}


def collect_status(svc: Services, limit: int = 20, *, engine=None, failures: int = 5,
                   now: float | None = None, budget_usd: float | None = None) -> dict[str, Any]:
    """Everything `status` shows, as plain data. The keys are stable (`status --json`):

    - `repo`: the repository; `generated_at`: Unix time of this snapshot.
    - `sessions`: `{"in_use", "cap"}`: agent sessions running now, of `engine.max_sessions`.
    - `spending`: `{"day" (UTC, YYYY-MM-DD), "spent_usd", "budget_usd" (null: none), "exceeded",
      "message" (null unless exceeded)}`.
    - `running`: runs whose process step has started and that are not finished.
    - `queued`: runs not finished whose process step has not started (check-deps, or waiting for a
      session).
    - `blocked`: the latest run of each issue that failed (or is being handed to a person now).
    - `failures`: the last failed attempts, newest first: `{"issue_id", "run_id", "run", "step",
      "attempt", "at", "reason" (one line), "final" (the run failed with it)}`.
    - `recent`: the last `limit` finished runs, newest first.
    - `parked`: the parks in effect (`beads_runner.parking.Park.as_dict`): a provider's quota or
      credentials, the daily budget.

    `budget_usd` overrides the configuration's `agent.daily_budget_usd`.

    Each run (in running, queued, blocked, recent): `run_id`, `run` (short id), `issue_id`, `title`
    (null until check-deps read the issue), `status` (engine: queued|running|failing|succeeded|
    failed|cancelled), `phase` (running|queued|blocked|landed|skipped|superseded|failed|cancelled), `step`,
    `step_status`, `attempt`, `max_attempts` (of the current step; null once finished), `retry_at`
    (Unix time of the next try, or null), `elapsed_s`, `created_at`, `finished_at`, `failed_step`,
    `error`, `outcome` (the commit step's output), `commit` (sha or null), `steps`, `attempts`,
    `sessions` (per agent session: run_id, attempt, source, session_id, started_at, tokens, input,
    output, reasoning, cache_read, cache_write, cost, steps), `tokens`, `cost` (dollars), `reason`
    (`explain`'s code, summary and what would change it), `handover_recorded_locally` (the tracker
    refused the handover).
    """
    now = time.time() if now is None else now
    cap = svc.config.engine.max_sessions
    from beads_runner.explain import queue_positions
    from beads_runner.parking import parks_in_effect

    data: dict[str, Any] = {"repo": str(svc.repo), "generated_at": round(now, 3),
                            "sessions": {"in_use": 0, "cap": cap}, "spending": _spending(svc, now, budget_usd),
                            "parked": [], "running": [], "queued": [], "blocked": [], "failures": [], "recent": []}
    engine = engine if engine is not None else _engine(svc)
    if engine is None:
        return data
    # Parks and the budget are this machine's: they hold the steps that run here.
    parks = parks_in_effect(svc.config, svc.state_dir, now) if engine.steps_run_here else []
    data["parked"] = [p.as_dict() for p in parks]
    positions = queue_positions(engine)
    active = engine.runs(statuses=ACTIVE, limit=1000)
    recent = engine.runs(statuses=FINISHED, limit=limit)
    latest_failed: list[RunView] = []
    seen: set[str] = set()
    for run in engine.runs(statuses=(FAILED,), limit=200):
        if run.key in seen:
            continue
        seen.add(run.key)
        newest = engine.runs(key=run.key, limit=1)
        if newest and newest[0].id == run.id:
            latest_failed.append(run)
    for run in active:
        d = _run_dict(engine, run, svc.state_dir, now, parks=parks, positions=positions)
        data[{"running": "running", "queued": "queued", "blocked": "blocked"}[d["phase"]]].append(d)
    data["blocked"] += [_run_dict(engine, r, svc.state_dir, now, parks=parks) for r in latest_failed]
    data["recent"] = [_run_dict(engine, r, svc.state_dir, now, parks=parks) for r in recent]
    # Oldest first for what is in flight; newest first for what is over.
    data["running"].reverse()
    data["queued"].reverse()
    data["failures"] = _failures(engine, [*active, *engine.runs(limit=50)], failures) if failures else []
    data["sessions"]["in_use"] = engine.sessions_in_use(SESSION_KEY)
    return data


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{(seconds % 3600) // 60:02.0f}m"


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}" if value < 1 else f"${value:.2f}"


def _outcome_line(run: dict[str, Any]) -> str:
    if run["status"] == FAILED:
        return f"failed at {run['failed_step']}: {one_line(run['error'], 100)}"
    out = run.get("outcome") or {}
    if out.get("superseded"):
        return f"superseded: {one_line(out.get('superseded'), 100)}"
    if did_no_work(out):
        return f"skipped: {one_line(out.get('reason'), 100)}"
    return out.get("close_reason") or run["status"]
