"""`GET /api/events`: server-sent events, so the pages update without a reload.

- `engine`: one per event of the engine's log (step started, failed, landed, ...), its JSON as
  `engine.events_since` gives it; `id:` is the event's id, so a reconnecting browser resumes after
  the last one it saw (`Last-Event-ID`), or from `?after=<id>`.
- `state`: the digest of what is in flight (run, status, step, try; sessions in use) whenever it
  changes. On Hatchet, whose runs API keeps no event log, this is what moves the pages.
- a comment line every 15 s keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from beads_runner.console.api import read
from beads_runner.run_views import ACTIVE
from workflows.task_flow import SESSION_KEY

POLL = 0.5  # seconds between looks at the engine's event log
DIGEST_EVERY = 2.0  # seconds between looks at what is in flight
KEEPALIVE = 15.0


def _digest(engine) -> tuple[str, dict]:
    runs = engine.runs(statuses=ACTIVE, limit=1000)
    state = {"active": [[r.id, r.key, r.status, *((s.name, s.status, s.attempt) if (s := r.current_step) else ())]
                        for r in runs],
             "sessions_in_use": engine.sessions_in_use(SESSION_KEY)}
    text = json.dumps(state, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16], state


def _frame(event: str, payload, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(payload, default=str, separators=(',', ':'))}\n\n"


async def events(request: Request):
    st = request.app.state.console
    start = request.headers.get("last-event-id") or request.query_params.get("after")
    try:
        after = int(start) if start is not None else None
    except ValueError:
        after = None

    async def stream():
        nonlocal after
        last_digest, digest_at, sent_at, version = None, 0.0, time.monotonic(), st.version
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            engine = await read(request, st.engine)
            if engine is not None:
                if after is None:
                    after = await read(request, engine.last_event_id)
                batch = await read(request, engine.events_since, after, 200)
                for ev in batch:
                    after = max(after, int(ev.get("id") or 0))
                    yield _frame("engine", ev, after)
                    sent_at = time.monotonic()
                now = time.monotonic()
                if batch or now - digest_at >= DIGEST_EVERY or st.version != version:
                    version, digest_at = st.version, now
                    try:
                        digest, state = await read(request, _digest, engine)
                    except Exception:  # noqa: BLE001 - an engine that did not answer: try again later
                        digest, state = last_digest, None
                    if digest != last_digest and state is not None:
                        last_digest = digest
                        yield _frame("state", state)
                        sent_at = time.monotonic()
            if time.monotonic() - sent_at >= KEEPALIVE:
                yield ": keepalive\n\n"
                sent_at = time.monotonic()
            await asyncio.sleep(POLL)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


ROUTES = [Route("/api/events", events)]
