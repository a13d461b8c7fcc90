"""`agent.mode = "server"`: one `opencode serve` per runner process, a session per issue over HTTP.

Every `opencode run` boots a whole runtime (about 5 s of CPU on a 2-core machine) before its first
model call. Here one `opencode serve` (started on first use, restarted when it died) holds the
runtime, and each session is an HTTP conversation with it (opencode 1.18.33's API, `GET /doc`):

- `GET /event?directory=<worktree>`: the server's event stream (SSE), subscribed BEFORE the prompt
  is sent, so nothing is missed;
- `POST /session?directory=<worktree>` with a title and a permission ruleset (a new session), or
  `GET /session/<id>` (continuing one: the fix loop, a resumed run);
- `POST /session/<id>/prompt_async`: the prompt, as the message body (never on a command line);
- `POST /session/<id>/abort` on the wall-clock limit, a stall, `cancel` or shutdown.

The server process itself (loopback, random password, its own process group recorded with
`procreg`, restarts) is `opencode_serve.OpenCodeServer`. A runner killed with SIGKILL leaves nothing
that a restarted runner does not kill before it resumes, and within a process this agent refuses a
second session in a worktree that has one running: no two sessions ever work in one worktree.

The stream is translated into exactly the events `opencode run --format json` prints (`step_start`,
`text`, `tool_use`, `step_finish`, `error`; the mapping is opencode's own `run` command's) and
folded by the same `SessionEvents`, so the verdict rules are the same in both modes. A session ends
when the server reports it idle. What `run` hides is kept: while opencode retries a failing
provider, the server reports `session.status` "retry" with the provider's message and the time of
opencode's next try. Each becomes a `provider_retry` event (to `on_event` and the NDJSON log) and a
`ProviderRetry` on the result; the stall clock waits for the announced next try.

Nothing may wait on a person: every permission class is set explicitly on the session (the ones a
non-interactive `run` would auto-reject are denied), and any permission or question the server asks
anyway is rejected at once, as `opencode run` does.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from beads_runner.agent.base import EventCallback, ProviderRetry, SessionRequest, SessionResult
from beads_runner.limits import ProviderLimit, classify
from beads_runner.agent.events import SessionEvents
from beads_runner.agent.ending import Ending, limit_ending, supervisor_ending
from beads_runner.agent.opencode import TITLE_MAX, OpenCodeAgent
from beads_runner.agent.opencode_serve import EventStream, OpenCodeServer, ServerGone, Endpoint
from beads_runner.agent.process import call_guarded
from beads_runner.agent.permissions import permission_rules
from beads_runner.agent.server_events import provider_retry, run_events, session_of
from beads_runner.config import AgentConfig

SUBSCRIBE_TIMEOUT = 30.0  # from GET /event to its `server.connected` event
ABORT_WAIT = 10.0  # after POST /abort, how long the session may take to go idle before the server goes
TICK = 0.1

@dataclass
class _Outcome:
    idle: bool = False  # the server reported the session idle: it ended by itself
    timed_out: bool = False
    stalled: bool = False
    cancelled: bool = False
    server_died: str = ""  # why the stream or the server was lost
    retries: list[ProviderRetry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the output tail
    limit: ProviderLimit | None = None  # a retry whose message is a spent quota or refused credentials


class OpenCodeServerAgent(OpenCodeAgent):
    """The `opencode` agent in `agent.mode = "server"`. Same results, same rules as `run`."""

    def __init__(self, config: AgentConfig, repo_root: Path):
        super().__init__(config, repo_root)
        self._server: OpenCodeServer | None = None
        self._server_lock = threading.Lock()
        self._busy: set[str] = set()  # worktrees with a session of ours running: never two in one
        self._busy_lock = threading.Lock()

    def server(self) -> OpenCodeServer:
        with self._server_lock:
            if self._server is None:
                self._server = OpenCodeServer(self.resolve_executable(), self._env(), list(self.config.args))
            return self._server

    def close(self) -> None:
        """Stop the server (the runner's shutdown; atexit does it too)."""
        with self._server_lock:
            server = self._server
        if server is not None:
            server.stop()

    def _model(self) -> dict[str, str] | None:
        if not self.config.model:
            return None
        provider, _, model = self.config.model.partition("/")
        return {"providerID": provider, "modelID": model}

    def run(self, request: SessionRequest, *, cancel: threading.Event | None = None,
            on_event: EventCallback | None = None) -> SessionResult:
        workdir = str(Path(request.workdir).resolve())
        with self._busy_lock:
            if workdir in self._busy:
                return SessionResult(ok=False, retryable=True, session_id=request.session_id,
                                     reason=f"another session is already running in {workdir}",
                                     output_tail=f"beads-runner: another session is already running in {workdir}")
            self._busy.add(workdir)
        try:
            return self._run(request, workdir, cancel, on_event)
        finally:
            with self._busy_lock:
                self._busy.discard(workdir)

    def _run(self, request: SessionRequest, workdir: str, cancel: threading.Event | None,
             on_event: EventCallback | None) -> SessionResult:
        started = time.monotonic()
        server = self.server()
        endpoint = server.ensure()
        events = SessionEvents()
        outcome = _Outcome()
        logfile: IO[str] | None = None
        if request.log_path is not None:
            request.log_path.parent.mkdir(parents=True, exist_ok=True)
            logfile = open(request.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        callback_errors: list[str] = []

        def emit(event: dict[str, Any]) -> None:
            if logfile is not None:
                logfile.write(json.dumps(event) + "\n")
                logfile.flush()
            events.add(event)
            if on_event is not None:
                call_guarded(on_event, event, callback_errors, "event")

        session_id = request.session_id
        server.enter(workdir)
        stream: EventStream | None = None
        try:
            try:
                stream = server.events(endpoint, workdir)
                if not _wait(stream.connected, SUBSCRIBE_TIMEOUT, cancel):
                    raise ServerGone(stream.error or "the event stream did not connect")
                session_id, refusal = self._open_session(server, endpoint, request, workdir)
                if refusal:
                    return self._result(events, outcome, started, refusal, session_id, callback_errors, server)
                self._follow(server, endpoint, stream, session_id, workdir, request, cancel, emit, outcome)
            except ServerGone as exc:
                outcome.server_died = str(exc)
        finally:
            if stream is not None:
                stream.close()
            if logfile is not None:
                logfile.close()
            if server.alive():
                server.leave(endpoint, workdir)
        return self._result(events, outcome, started, "", session_id, callback_errors, server)

    def _open_session(self, server: OpenCodeServer, endpoint: Endpoint, request: SessionRequest,
                      workdir: str) -> tuple[str | None, str]:
        """(session id, "") to go on; (id, reason) when the session cannot be had."""
        if request.session_id:
            status, body = server.call(endpoint, "GET", f"/session/{request.session_id}", directory=workdir)
            if status == 404:
                return request.session_id, f"session {request.session_id} not found on the opencode server"
            if status != 200:
                return request.session_id, f"opencode server answered HTTP {status} for the session: {_short(body)}"
            return request.session_id, ""
        title = " ".join((request.title or request.issue_id).split())[:TITLE_MAX] or request.issue_id
        rules = permission_rules(self._env().get("OPENCODE_PERMISSION"))
        status, body = server.call(endpoint, "POST", "/session", directory=workdir,
                                   body={"title": title, "permission": rules})
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return None, f"opencode server did not create a session (HTTP {status}): {_short(body)}"
        return body["id"], ""

    def _follow(self, server: OpenCodeServer, endpoint: Endpoint, stream: EventStream, session_id: str,
                workdir: str, request: SessionRequest, cancel: threading.Event | None, emit, outcome: _Outcome,
                ) -> None:
        """Prompt the session and follow it to idle or a limit."""
        # A session is never prompted twice at once: if it is still running (a limit hit while an
        # abort did not take), it is stopped first.
        status, body = server.call(endpoint, "GET", "/session/status", directory=workdir)
        if status == 200 and isinstance(body, dict) and isinstance(body.get(session_id), dict) \
                and body[session_id].get("type") != "idle":
            outcome.notes.append(f"session {session_id} was still running: aborted before the prompt")
            self._abort(server, endpoint, stream, session_id, workdir, outcome)
        prompt: dict[str, Any] = {"parts": [{"type": "text", "text": request.prompt}]}
        if self._model():
            prompt["model"] = self._model()
        status, body = server.call(endpoint, "POST", f"/session/{session_id}/prompt_async", directory=workdir,
                                   body=prompt)
        if status not in (200, 204):
            refused = f"opencode server refused the prompt (HTTP {status}): {_short(body)}"
            emit({"type": "error", "timestamp": int(time.time() * 1000), "sessionID": session_id,
                  "error": {"name": "PromptRefused", "data": {"message": refused}}})
            outcome.idle = True
            return
        tree = {session_id}
        started = time.monotonic()
        last_activity = time.monotonic()
        retry_until = 0.0  # monotonic time of opencode's next try: silence until then is no stall
        working = False  # the session was seen busy (or producing) after our prompt
        while True:
            now = time.monotonic()
            if now - started >= self.config.timeout:
                outcome.timed_out = True
            elif now - max(last_activity, retry_until) >= self.config.stall_timeout:
                outcome.stalled = True
            elif cancel is not None and cancel.is_set():
                outcome.cancelled = True
            if outcome.timed_out or outcome.stalled or outcome.cancelled:
                self._abort(server, endpoint, stream, session_id, workdir, outcome)
                return
            try:
                raw = stream.queue.get(timeout=TICK)
            except queue.Empty:
                continue
            if raw is None:
                why = stream.error or "the event stream ended"
                if not server.alive():
                    why = f"the opencode server died ({why})"
                raise ServerGone(why)
            if session_of(raw) in tree:
                last_activity = time.monotonic()
            kind = raw.get("type")
            props = raw.get("properties") if isinstance(raw.get("properties"), dict) else {}
            if kind in ("permission.asked", "question.asked") and props.get("sessionID") in tree:
                self._reject(server, endpoint, kind, props, workdir, outcome)
                continue
            for event in run_events(raw, session_id, tree):
                if event["type"] == "provider_retry":
                    retry = provider_retry(event)
                    outcome.retries.append(retry)
                    if retry.next_at is not None:
                        retry_until = time.monotonic() + max(0.0, retry.next_at - time.time())
                    found = classify(retry.message)
                    if found is not None and found.parks and outcome.limit is None:
                        outcome.limit = found  # no retry beats it soon: the run is parked, not failed
                emit(event)
                working = True
            if outcome.limit is not None:
                self._abort(server, endpoint, stream, session_id, workdir, outcome)
                return
            if kind == "session.status" and props.get("sessionID") == session_id:
                state = (props.get("status") or {}).get("type")
                if state in ("busy", "retry"):
                    working = True
                elif state == "idle" and working:
                    outcome.idle = True
                    return

    def _abort(self, server: OpenCodeServer, endpoint: Endpoint, stream: EventStream, session_id: str,
               workdir: str, outcome: _Outcome) -> None:
        """POST /abort, then wait for idle; a server that cannot stop the session is stopped itself."""
        try:
            status, _ = server.call(endpoint, "POST", f"/session/{session_id}/abort", directory=workdir,
                                    timeout=ABORT_WAIT)
        except ServerGone:
            status = 0
        deadline = time.monotonic() + ABORT_WAIT
        while status == 200 and time.monotonic() < deadline:
            try:
                raw = stream.queue.get(timeout=TICK)
            except queue.Empty:
                continue
            if raw is None:
                break
            props = raw.get("properties") if isinstance(raw.get("properties"), dict) else {}
            if raw.get("type") == "session.status" and props.get("sessionID") == session_id \
                    and (props.get("status") or {}).get("type") == "idle":
                outcome.notes.append(f"session {session_id} aborted")
                return
        outcome.notes.append(f"session {session_id} did not stop on abort: the opencode server was stopped")
        server.kill_if(endpoint.generation, f"session {session_id} did not stop on abort")

    def _reject(self, server: OpenCodeServer, endpoint: Endpoint, kind: str, props: dict[str, Any],
                workdir: str, outcome: _Outcome) -> None:
        request_id = props.get("id")
        if not isinstance(request_id, str):
            return
        if kind == "permission.asked":
            path, body = f"/permission/{request_id}/reply", {"reply": "reject"}
            what = f"permission {props.get('permission')} ({', '.join(map(str, props.get('patterns') or []))})"
        else:
            path, body = f"/question/{request_id}/reject", None
            what = "question"
        outcome.notes.append(f"{what} requested: auto-rejected")
        try:
            server.call(endpoint, "POST", path, directory=workdir, body=body)
        except ServerGone:
            pass

    def _result(self, events: SessionEvents, outcome: _Outcome, started: float, refusal: str,
                session_id: str | None, callback_errors: list[str], server: OpenCodeServer) -> SessionResult:
        if refusal:
            ok, reason, retryable = False, refusal, True
        else:
            verdict = events.verdict(0 if outcome.idle else None)
            ok, reason, retryable = verdict.ok, verdict.reason, verdict.retryable
        if outcome.limit is None and not ok and events.error is not None:
            found = classify(events.error.message)  # e.g. a 401: opencode gives up and says so
            outcome.limit = found if found is not None and found.parks else None
        ending = limit_ending(outcome.limit) if outcome.limit is not None else supervisor_ending(
            timed_out=outcome.timed_out, stalled=outcome.stalled, cancelled=outcome.cancelled,
            timeout=self.config.timeout, stall_timeout=self.config.stall_timeout,
            silent="event from the opencode server", ended="aborted")
        if ending is None and outcome.server_died:
            ending = Ending(f"lost the opencode server mid-session: {outcome.server_died}", True)
        if ending is not None:
            ok, reason, retryable = False, ending.reason, ending.retryable
        tail: list[str] = []
        if outcome.server_died:
            tail += [f"opencode serve: {line}" for line in server.tail()[-10:]]
        if events.error is not None:
            tail.append(f"error event: {events.error.name}: {events.error.message}")
        for retry in outcome.retries[-5:]:
            tail.append(f"provider retry {retry.attempt}: {retry.message}")
        for tool in events.failed_tools[-5:]:
            tail.append(f"tool {tool.tool} failed: {tool.error}")
        tail += outcome.notes + callback_errors
        if not ok:
            tail.append(f"beads-runner: {reason}")
        return SessionResult(
            ok=ok, reason=reason, retryable=retryable, exit_code=0 if outcome.idle else None,
            session_id=events.session_id or session_id, summary=events.summary,
            tokens=events.tokens, cost=events.cost, duration_s=round(time.monotonic() - started, 3),
            events=events.events, timed_out=outcome.timed_out, stalled=outcome.stalled,
            cancelled=outcome.cancelled, output_tail="\n".join(tail), provider_retries=outcome.retries,
            limit=({"kind": outcome.limit.kind, "message": outcome.limit.message, "reset_at": outcome.limit.reset_at}
                   if outcome.limit is not None else None),
        )


def _wait(flag: threading.Event, timeout: float, cancel: threading.Event | None) -> bool:
    deadline = time.monotonic() + timeout
    while not flag.is_set() and time.monotonic() < deadline:
        if cancel is not None and cancel.is_set():
            return False
        flag.wait(TICK)
    return flag.is_set()


def _short(body: Any, limit: int = 200) -> str:
    text = body if isinstance(body, str) else json.dumps(body)
    return " ".join(text.split())[:limit]
