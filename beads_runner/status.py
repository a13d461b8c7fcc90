"""What ran, what runs and what landed: `status`, `logs` and `review`, for people and for scripts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from beads_runner.errors import RunnerError
from beads_runner.services import Services
from workflows.local import RunView
from workflows.task_flow import SESSION_KEY


def _engine(svc: Services):
    from beads_runner.daemon import STATE_DB, build_engine

    if not (svc.state_dir / STATE_DB).exists():
        return None
    return build_engine(svc)


def _run_dict(engine, run: RunView) -> dict[str, Any]:
    current = run.current_step
    attempts = engine.attempts(run.id)
    sessions = [a["notes"] for a in attempts if a["step"] == "process" and a["notes"]]
    end = run.finished_at or time.time()
    return {
        "run_id": run.id,
        "issue_id": run.key,
        "status": run.status,
        "step": current.name if current and run.status in ("queued", "running", "failing") else None,
        "attempt": current.attempt if current else None,
        "elapsed_s": round(end - run.created_at, 1),
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "failed_step": run.failed_step,
        "error": run.error,
        "outcome": run.outcome,
        "steps": [{"name": s.name, "status": s.status, "attempt": s.attempt, "max_attempts": s.max_attempts,
                   "error": s.error} for s in run.steps],
        "sessions": sessions,
        "tokens": sum(int(s.get("tokens") or 0) for s in sessions),
        "cost": round(sum(float(s.get("cost") or 0) for s in sessions), 6),
    }


def collect_status(svc: Services, limit: int = 20) -> dict[str, Any]:
    engine = _engine(svc)
    cap = svc.config.engine.max_sessions
    if engine is None:
        return {"repo": str(svc.repo), "sessions": {"in_use": 0, "cap": cap}, "active": [], "recent": []}
    active = [_run_dict(engine, r) for r in engine.runs(statuses=("queued", "running", "failing"), limit=1000)]
    recent = [_run_dict(engine, r) for r in engine.runs(statuses=("succeeded", "failed", "cancelled"), limit=limit)]
    return {
        "repo": str(svc.repo),
        "sessions": {"in_use": engine.sessions_in_use(SESSION_KEY), "cap": cap},
        "active": active,
        "recent": recent,
    }


def _outcome_line(run: dict[str, Any]) -> str:
    if run["status"] == "failed":
        return f"failed at {run['failed_step']}: {run['error']}"
    out = run.get("outcome") or {}
    if out.get("skipped"):
        return f"skipped: {out.get('reason')}"
    return out.get("close_reason") or run["status"]


def render_status(data: dict[str, Any]) -> str:
    s = data["sessions"]
    lines = [f"sessions in use: {s['in_use']}/{s['cap']}", ""]
    if data["active"]:
        lines.append("RUNNING / QUEUED")
        for r in data["active"]:
            step = r["step"] or "-"
            attempt = f"try {r['attempt']}" if r["attempt"] else ""
            lines.append(f"  {r['issue_id']:<16} {r['status']:<8} {step:<10} {attempt:<6} "
                         f"{r['elapsed_s']:>7.1f}s  {r['run_id']}")
    else:
        lines.append("nothing running")
    if data["recent"]:
        lines += ["", "RECENT"]
        for r in data["recent"]:
            lines.append(f"  {r['issue_id']:<16} {r['status']:<9} {r['elapsed_s']:>7.1f}s  {_outcome_line(r)}")
    return "\n".join(lines)


def _find_run(svc: Services, engine, ref: str) -> RunView:
    run = engine.get_run(ref)
    if run is None:
        runs = engine.runs(key=ref, limit=1)
        run = runs[0] if runs else None
    if run is None:
        raise RunnerError(f"no run found for {ref!r}", fix="give an issue id or run id shown by `beads-runner status`")
    return run


def _agent_lines(path: Path, offset: int, as_json: bool) -> tuple[list[str], int]:
    if not path.exists():
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    complete = data[: data.rfind(b"\n") + 1]
    lines = []
    for raw in complete.decode("utf-8", errors="replace").splitlines():
        if as_json:
            lines.append(raw)
            continue
        try:
            event = json.loads(raw)
        except json.JSONDecodeError:
            continue
        lines.append("    agent " + describe_agent_event(event))
    return lines, offset + len(complete)


def describe_agent_event(event: dict[str, Any]) -> str:
    part = event.get("part") or {}
    kind = event.get("type")
    if kind == "text":
        return "text: " + " ".join(str(part.get("text", "")).split())[:200]
    if kind == "tool_use":
        state = part.get("state") or {}
        error = f": {state.get('error')}" if state.get("error") else ""
        return f"tool {part.get('tool')} {state.get('status')}{error}"
    if kind == "step_finish":
        tokens = (part.get("tokens") or {}).get("total")
        return f"step finished ({part.get('reason')}), tokens {tokens}, cost {part.get('cost')}"
    if kind == "error":
        err = event.get("error") or {}
        return f"ERROR {err.get('name')}: {(err.get('data') or {}).get('message')}"
    return str(kind)


def stream_logs(svc: Services, ref: str, follow: bool = False, as_json: bool = False) -> Iterator[str]:
    engine = _engine(svc)
    if engine is None:
        raise RunnerError("no runs yet in this repository", fix="start one with `beads-runner submit <id>`")
    run = _find_run(svc, engine, ref)
    last_event = 0
    offsets: dict[Path, int] = {}
    run_dir = svc.state_dir / "runs" / run.id
    while True:
        for ev in engine.events(run.id, after_id=last_event):
            last_event = ev["id"]
            if as_json:
                yield json.dumps(ev)
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(ev["ts"]))
                extra = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("id", "run_id", "step", "ts", "event"))
                yield f"{stamp} {ev['step'] or 'run':<10} {ev['event']}" + (f"  {extra}" if extra else "")
        for path in sorted(run_dir.glob("agent-*.ndjson")) if run_dir.exists() else []:
            lines, offsets[path] = _agent_lines(path, offsets.get(path, 0), as_json)
            yield from lines
        current = engine.get_run(run.id)
        if not follow or current is None or current.status not in ("queued", "running", "failing"):
            if follow:  # drain what the end of the run wrote
                for ev in engine.events(run.id, after_id=last_event):
                    yield json.dumps(ev) if as_json else f"{ev['step'] or 'run':<10} {ev['event']}"
            return
        time.sleep(0.5)


def landed_commits(svc: Services, issue_id: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
    ws = svc.workspace
    fmt = "%H%x1f%an%x1f%aI%x1f%s%x1f%(trailers:key=Beads-Issue,valueonly,separator=%x2C)%x1f" \
          "%(trailers:key=Beads-Run,valueonly)%x1f%(trailers:key=Agent,valueonly)%x1f" \
          "%(trailers:key=Gates,valueonly)%x1e"
    args = ["log", f"refs/heads/{ws.target}", f"--format={fmt}"]
    if since:
        args.append(f"--since={since}")
    out = ws.git(*args)
    engine = _engine(svc)
    commits = []
    for record in out.split("\x1e"):
        fields = record.strip("\n").split("\x1f")
        if len(fields) < 8 or not fields[4].strip():
            continue
        sha, author, date, subject, issue, run_id, agent, gates = (f.strip() for f in fields[:8])
        if issue_id and issue_id not in issue.split(","):
            continue
        entry: dict[str, Any] = {"sha": sha, "issue_id": issue, "run_id": run_id, "subject": subject, "date": date,
                                 "author": author, "agent": agent, "gates": gates,
                                 "diff_command": f"git show {sha[:10]}"}
        run = engine.get_run(run_id) if engine and run_id else None
        if run is not None:
            d = _run_dict(engine, run)
            entry.update(duration_s=d["elapsed_s"], tokens=d["tokens"], cost=d["cost"],
                         attempts=sum(s["attempt"] for s in d["steps"] if s["name"] == "process"))
            if issue_id:
                entry["history"] = [_run_dict(engine, r) for r in engine.runs(key=issue_id, limit=50)]
        commits.append(entry)
    return commits


def render_review(commits: list[dict[str, Any]]) -> str:
    if not commits:
        return "no landed commits found (looked for the Beads-Issue trailer)"
    lines = []
    for c in commits:
        extra = ""
        if "duration_s" in c:
            extra = f"  {c['duration_s']:.0f}s, {c['attempts']} attempt(s), {c['tokens']} tokens, ${c['cost']:.4f}"
        lines.append(f"{c['sha'][:10]}  {c['issue_id']:<14} {c['subject']}")
        lines.append(f"            gates: {c['gates'] or '-'}  agent: {c['agent'] or '-'}{extra}")
        lines.append(f"            {c['diff_command']}")
    return "\n".join(lines)
