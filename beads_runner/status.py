"""What ran, what runs and what landed: `status`, `logs` and `review`, for people and for scripts.

Everything here reads: the engine's SQLite (runs, steps, attempts, events), the run directories
(`.beads-runner/runs/<run_id>/agent-<attempt>.ndjson`, `gate-<name>.log`) and `git log` of the
target. Tokens and cost come from `beads_runner.costs`, so running and crashed sessions count.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from beads_runner import costs, safe_text
from beads_runner.errors import RunnerError
from beads_runner.logs import short_run_id
from beads_runner.services import Services
from workflows.engine import ACTIVE, FAILED, FAILING, FINISHED, PENDING, QUEUED, SUCCEEDED, Engine, RunView, \
    existing_engine
from workflows.task_flow import SESSION_KEY

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
        return "skipped" if outcome.get("skipped") else "landed"
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


# --- status for people -----------------------------------------------------------------------------
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
    if out.get("skipped"):
        return f"skipped: {one_line(out.get('reason'), 100)}"
    return out.get("close_reason") or run["status"]


def render_status(data: dict[str, Any]):
    """A rich renderable of `collect_status` data (tables of running, queued, blocked, failures, recent)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = data.get("generated_at") or time.time()
    s, spend = data["sessions"], data["spending"]
    budget = f" of {_money(spend['budget_usd'])}" if spend.get("budget_usd") is not None else " (no daily budget)"
    header = Text.assemble(
        ("beads-runner ", "bold"), f"{data['repo']}  ",
        (time.strftime("%H:%M:%S", time.localtime(now)), "dim"),
        "\nsessions in use: ", (f"{s['in_use']}/{s['cap']}", "bold"),
        f"   spent today (UTC {spend['day']}): ", (_money(spend["spent_usd"]), "bold"), budget)
    parts: list[Any] = [header]
    if spend.get("exceeded"):
        parts.append(Text(spend["message"], style="bold red"))
    for park in data.get("parked") or []:
        until = "until `beads-runner resume`" if park["until"] is None else \
            f"until {time.strftime('%H:%M:%S UTC', time.gmtime(park['until']))}"
        parts.append(Text(f"PARKED ({park['scope']}) {until}: {one_line(park['reason'], 120)}; "
                          f"{park['change']}", style="bold yellow"))

    def table(title: str, *columns: str) -> Table:
        t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, expand=False)
        for c in columns:
            t.add_column(c, overflow="fold", justify="right" if c in ("elapsed", "tokens", "cost", "try") else "left")
        return t

    if data["running"]:
        t = table(f"RUNNING ({len(data['running'])})", "issue", "title", "step", "try", "elapsed", "tokens", "cost",
                  "run")
        for r in data["running"]:
            step = r["step"] or "-"
            if r.get("retry_at"):
                step += f" (retry in {_ago(r['retry_at'] - now)})"
            t.add_row(r["issue_id"], one_line(r["title"] or "", 40), step,
                      f"{r['attempt']}/{r['max_attempts']}" if r["attempt"] else "-",
                      _ago(r["elapsed_s"]), f"{r['tokens']:,}", _money(r["cost"]), r["run"])
        parts.append(t)
    else:
        parts.append(Text("nothing running", style="dim"))
    if data["queued"]:
        t = table(f"QUEUED ({len(data['queued'])})", "issue", "title", "waiting", "at", "run")
        for r in data["queued"]:
            where = "waiting for a session" if r["step"] == PROCESS else (r["step"] or "-")
            if r["reason"]["code"] == "parked":
                where = "parked"
            elif r["reason"].get("queue_position"):
                where += f" (#{r['reason']['queue_position']})"
            t.add_row(r["issue_id"], one_line(r["title"] or "", 40), _ago(r["elapsed_s"]), where, r["run"])
        parts.append(t)
    if data["blocked"]:
        t = table(f"BLOCKED: needs a person ({len(data['blocked'])})", "issue", "title", "failed at", "reason", "run")
        for r in data["blocked"]:
            reason = one_line(r["error"], 90)
            if r.get("handover_recorded_locally"):
                reason += " [tracker refused the handover: recorded here only]"
            t.add_row(r["issue_id"], one_line(r["title"] or "", 40), r["failed_step"] or "-", reason, r["run"])
        parts.append(t)
    if data["failures"]:
        t = table("LAST FAILURES", "when", "issue", "step", "try", "reason")
        for f in data["failures"]:
            when = time.strftime("%m-%d %H:%M:%S", time.localtime(f["at"])) if f["at"] else "-"
            t.add_row(when, f["issue_id"], f["step"], f"{f['attempt']}{'' if not f['final'] else ' (last)'}",
                      one_line(f["reason"], 100))
        parts.append(t)
    if data["recent"]:
        t = table("RECENT", "issue", "result", "took", "tokens", "cost", "run")
        for r in data["recent"]:
            t.add_row(r["issue_id"], _outcome_line(r), _ago(r["elapsed_s"]), f"{r['tokens']:,}", _money(r["cost"]),
                      r["run"])
        parts.append(t)
    return Group(*parts)


def render_text(renderable, width: int = 160) -> str:
    """A rich renderable as plain text (no colours), for pipes and tests."""
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, legacy_windows=False).print(renderable)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip("\n").splitlines())


def watch_status(svc: Services, limit: int = 20, interval: float = 1.0, console=None) -> None:
    """Redraw the status every `interval` seconds until Ctrl-C (which returns normally)."""
    from rich.live import Live

    engine = _engine(svc)
    try:
        with Live(render_status(collect_status(svc, limit, engine=engine)), console=console,
                  refresh_per_second=4, transient=False) as live:
            while True:
                time.sleep(interval)
                if engine is None:
                    engine = _engine(svc)
                live.update(render_status(collect_status(svc, limit, engine=engine)))
    except KeyboardInterrupt:
        return


# --- logs --------------------------------------------------------------------------------------------
def _find_run(engine: Engine, ref: str) -> RunView:
    run = engine.get_run(ref)
    if run is None:
        runs = engine.runs(key=ref, limit=1)
        run = runs[0] if runs else None
    if run is None and ref:
        matches = [r for r in engine.runs(limit=100000) if r.id.endswith(ref) or short_run_id(r.id) == ref]
        run = matches[0] if len(matches) == 1 else None
    if run is None:
        raise RunnerError(f"no run found for {ref!r}",
                          fix="give an issue id or a run id (or its short form) shown by `beads-runner status`")
    return run


def describe_agent_event(event: dict[str, Any]) -> str:
    part = event.get("part") if isinstance(event.get("part"), dict) else {}
    kind = event.get("type")
    if kind == "text":
        return "text: " + one_line(part.get("text", ""), 200)
    if kind == "tool_use":
        state = part.get("state") if isinstance(part.get("state"), dict) else {}
        title = f" {one_line(state.get('title'), 60)}" if state.get("title") else ""
        error = f": {one_line(state.get('error'), 160)}" if state.get("error") else ""
        return f"tool {part.get('tool')}{title} {state.get('status')}{error}"
    if kind == "step_finish":
        u = costs.step_finish_usage(event) or costs.Usage()
        return (f"step finished ({part.get('reason')}): {u.tokens} tokens (in {u.input}, out {u.output}, "
                f"reasoning {u.reasoning}, cache read {u.cache_read}/write {u.cache_write}), cost {_money(u.cost)}")
    if kind == "step_start":
        return "step started"
    if kind == "error":
        err = event.get("error") if isinstance(event.get("error"), dict) else {}
        data = err.get("data") if isinstance(err.get("data"), dict) else {}
        return f"ERROR {err.get('name')}: {one_line(data.get('message') or err.get('message'), 200)}"
    if kind == "output":
        return f"output: {one_line(event.get('text'), 200)}"
    return str(kind)


class _AgentFile:
    """New complete lines of one agent-<n>.ndjson, each with a time (its own, else the last one seen)."""

    def __init__(self, path: Path, attempt: int, start: float):
        self.path, self.attempt, self.offset, self.last_ts = path, attempt, 0, start

    def read(self) -> list[tuple[float, dict[str, Any], str]]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        items = []
        for raw in complete.decode("utf-8", errors="replace").splitlines():
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
            except json.JSONDecodeError:
                event = None
            if not isinstance(event, dict):
                event = {"type": "output", "text": raw}
                raw = json.dumps({"source": "agent", "attempt": self.attempt, "type": "output", "text": raw})
            ts = costs.event_time(event)
            if ts is not None:
                self.last_ts = ts
            items.append((self.last_ts, event, raw))
        return items


def _engine_line(ev: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(ev["ts"]))
    extra = " ".join(f"{k}={one_line(v, 120)}" for k, v in ev.items()
                     if k not in ("id", "run_id", "step", "ts", "event", "source") and v is not None)
    return f"{stamp}  {ev['step'] or 'run':<10} {ev['event']}" + (f"  {extra}" if extra else "")


def stream_logs(svc: Services, ref: str, follow: bool = False, as_json: bool = False,
                poll: float = 0.5) -> Iterator[str]:
    """A run's engine events and its agent sessions' events, interleaved by time, as lines.

    Human: `HH:MM:SS  <step|run|agent#n>  what happened`. JSON (`--json`): one object a line; engine
    events are `{"source": "engine", "id", "run_id", "step", "ts", "event", ...their fields}`, agent
    events are opencode's raw events as written (non-JSON agent output is wrapped as
    `{"source": "agent", "attempt", "type": "output", "text"}`). With `follow`, keeps going until
    the run is finished."""
    engine = _engine(svc)
    if engine is None:
        raise RunnerError("no runs yet in this repository", fix="start one with `beads-runner submit <id>`")
    run = _find_run(engine, ref)
    if not as_json:
        title = _title(run)
        yield f"run {run.id}  issue {run.key}" + (f": {one_line(title, 200)}" if title else "") + f"  ({run.status})"
    pushed = engine.stream(run.id) if follow else None
    if pushed is not None:
        # An engine that pushes its events (Hatchet: the steps run on workers): follow its stream.
        for ev in pushed:
            yield json.dumps({"source": "engine", **ev}) if as_json else _engine_line(
                {"ts": time.time(), "step": ev.get("step"), "event": ev.get("event", "event"),
                 **{k: v for k, v in ev.items() if k not in ("step", "event", "ts")}})
        return
    last_event = 0
    files: dict[Path, _AgentFile] = {}
    run_dir = svc.state_dir / "runs" / run.id
    finished = False
    while True:
        current = engine.get_run(run.id)
        finished = current is None or current.status not in ACTIVE
        items: list[tuple[float, int, str]] = []
        for ev in engine.events(run.id, after_id=last_event):
            last_event = ev["id"]
            items.append((ev["ts"], 0, json.dumps({"source": "engine", **ev}) if as_json else _engine_line(ev)))
        if run_dir.exists():
            starts = {a["attempt"]: a["started_at"] for a in engine.attempts(run.id) if a["step"] == PROCESS}
            for path in sorted(run_dir.glob("agent-*.ndjson")):
                if path not in files:
                    n = costs._attempt_of(path) or 0
                    files[path] = _AgentFile(path, n, starts.get(n) or path.stat().st_mtime)
                f = files[path]
                for ts, event, raw in f.read():
                    if as_json:
                        items.append((ts, 1, raw))
                    else:
                        stamp = time.strftime("%H:%M:%S", time.localtime(ts))
                        items.append((ts, 1, f"{stamp}  {'agent#' + str(f.attempt):<10} "
                                             f"{describe_agent_event(event)}"))
        items.sort(key=lambda item: (item[0], item[1]))
        for _ts, _order, line in items:
            yield line
        if not follow or finished:
            break
        time.sleep(poll)
    if not as_json and run_dir.exists():
        for gate_log in sorted(run_dir.glob("gate-*.log")):
            yield f"gate output: {gate_log}"


# --- review ------------------------------------------------------------------------------------------
def _history_entry(run: dict[str, Any]) -> dict[str, Any]:
    return {key: run[key] for key in ("run_id", "run", "status", "phase", "title", "created_at", "finished_at",
                                      "elapsed_s", "failed_step", "error", "commit", "attempts", "sessions",
                                      "tokens", "cost")} | {"result": _outcome_line(run)}


def review_data(svc: Services, issue_id: str | None = None, since: str | None = None) -> dict[str, Any]:
    """Landed commits (found by their `Beads-Issue` trailer on the target) and, for one issue, its
    whole history. Keys (`review --json`): `target`, `since`, `issue_id`, `commits` (newest first:
    `sha`, `issue_id`, `title`, `subject`, `date`, `author`, `run_id`, `agent`, `gates`, `attempts`
    (agent sessions of the landing run; null if the run is unknown here), `duration_s`, `tokens`,
    `cost`, `diff_command`), and `history` (null without an issue: every run of the issue, newest
    first, with `run_id`, `status`, `phase`, `result`, `failed_step`, `error`, `commit`, `attempts`
    (each step try with status and error), `sessions`, `tokens`, `cost`, ...)."""
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
        if issue_id and issue_id not in [i.strip() for i in issue.split(",")]:
            continue
        title = subject[: -len(f" ({issue})")] if subject.endswith(f" ({issue})") else subject
        entry: dict[str, Any] = {"sha": sha, "issue_id": issue, "title": title, "subject": subject, "date": date,
                                 "author": author, "run_id": run_id or None, "agent": agent, "gates": gates,
                                 "attempts": None, "duration_s": None, "tokens": None, "cost": None,
                                 "diff_command": f"git show {sha[:10]}"}
        run = engine.get_run(run_id) if engine and run_id else None
        if run is not None:
            d = _run_dict(engine, run, svc.state_dir)
            tries = sum(1 for a in d["attempts"]
                        if a["step"] == PROCESS and a["status"] not in ("interrupted", "deferred"))
            entry.update(title=d["title"] or title, duration_s=d["elapsed_s"], tokens=d["tokens"], cost=d["cost"],
                         attempts=tries)
        commits.append(entry)
    history = None
    if issue_id:
        history = [_history_entry(_run_dict(engine, r, svc.state_dir))
                   for r in engine.runs(key=issue_id, limit=1000)] if engine else []
    return {"target": ws.target, "since": since, "issue_id": issue_id, "commits": commits, "history": history}



def render_review(data: dict[str, Any]) -> str:
    lines: list[str] = []
    commits = data["commits"]
    if not commits:
        lines.append(f"no landed commits on {data['target']}"
                     + (f" for {data['issue_id']}" if data.get("issue_id") else "")
                     + " (looked for the Beads-Issue trailer)")
    for c in commits:
        lines.append(f"{c['sha'][:10]}  {c['issue_id']:<14} {one_line(c['title'], 200)}")
        details = [f"gates: {c['gates'] or '-'}", f"agent: {c['agent'] or '-'}"]
        if c["duration_s"] is not None:
            details += [f"{c['attempts']} attempt(s)", f"took {_ago(c['duration_s'])}", f"{c['tokens']:,} tokens",
                        _money(c["cost"])]
        lines.append("            " + "  ".join(details))
        lines.append(f"            {c['date']}  run {c['run_id'] or '-'}  diff: {c['diff_command']}")
    if data.get("history") is not None:
        lines += ["", f"HISTORY of {data['issue_id']}" + ("" if data["history"] else ": no runs recorded here")]
        for h in data["history"]:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["created_at"]))
            lines.append(f"  {h['run_id']}  {started}  {h['phase']}: {h['result']}")
            lines.append(f"    took {_ago(h['elapsed_s'])}, {h['tokens']:,} tokens, {_money(h['cost'])}"
                         + (f", commit {h['commit'][:10]}" if h["commit"] else ""))
            for a in h["attempts"]:
                reason = f": {one_line(a['error'], 120)}" if a["error"] else ""
                lines.append(f"    {a['step']:<10} try {a['attempt']}  {a['status']}{reason}")
    return "\n".join(lines)
