"""`logs`: a run's engine events and its agent sessions' events, interleaved by time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from beads_runner import costs
from beads_runner.errors import RunnerError
from beads_runner.logs import short_run_id
from beads_runner.services import Services
from workflows.engine import ACTIVE, Engine, RunView

from beads_runner.run_views import PROCESS, _engine, _money, _title, one_line


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
