"""The JSON API: runs, a run, an issue, the Now view, metrics; and the actions, which are the
command line's own functions (`beads_runner.actions`), so a click in the browser does exactly what
`beads-runner submit/retry/cancel` does.

Every answer is JSON; an error is `{"error": ..., "fix": ...}` with 400 (bad input), 404 (unknown),
409 (refused: the action cannot be carried out now) or 503 (the engine did not answer).
"""

from __future__ import annotations

import functools
import json
from types import GeneratorType
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from beads_runner import actions
from beads_runner.console import data
from beads_runner.console.metrics import prometheus
from beads_runner.errors import RunnerError, UnsafeIdError


def _error(status: int, error: str, fix: str | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "fix": fix}, status_code=status)


def _state(request: Request):
    return request.app.state.console


async def in_thread(fn, *args, **kwargs):
    """Blocking engine/tracker code, off the event loop, on one worker thread at a time: each thread
    that reads the engine holds its own SQLite connection (and page cache), and the console must stay
    small inside the daemon. Reads take milliseconds; a slow action holds the others back, no more."""
    limiter = getattr(in_thread, "limiter", None)
    if limiter is None:
        limiter = in_thread.limiter = anyio.CapacityLimiter(1)
    return await anyio.to_thread.run_sync(functools.partial(_trimmed, fn, *args, **kwargs), limiter=limiter)


def _trimmed(fn, *args, **kwargs):
    """`fn`, then the heap it freed handed back to the system (glibc's malloc_trim): the runs a
    request read are garbage once it answers, and the daemon's RSS should not keep their peak."""
    try:
        return fn(*args, **kwargs)
    finally:
        if _TRIM is not None:
            _TRIM(0)


def _malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def reads_here(request: Request) -> bool:
    """Whether reads run on the event loop's own thread: inside the daemon (`start --ui`) on the
    embedded engine, whose reads are SQLite queries by index of milliseconds (and one at a time
    anyway). A worker thread would cost the daemon its own glibc arena, stack and SQLite connection
    (measured: 1.2 MB kept); it is started only for an action. `beads-runner ui` (a process of its
    own) and Hatchet (reads over the network) read on the worker thread."""
    st = _state(request)
    return st.shared_engine and request.app.state.engine_kind == "local"


async def read(request: Request, fn, *args):
    """A read for a page, the API or the event stream: here or on the worker thread (`reads_here`)."""
    if reads_here(request):
        return _trimmed(fn, *args)
    return await in_thread(fn, *args)


async def _call(fn, *args, **kwargs):
    """Run blocking engine/tracker code off the event loop; map the runner's errors to answers."""
    return await _answered(in_thread(fn, *args, **kwargs))


async def _read(request: Request, fn):
    """`read`, its errors mapped to answers as `_call` maps them."""
    return await _answered(read(request, fn))


async def metrics(request: Request):
    """The Charts numbers: inside the daemon from a child process, waited for without a thread."""
    st = _state(request)
    if st.metrics.in_child:
        return await _answered(st.metrics.from_child(st.svc))
    return await _call(lambda: st.metrics.get(st.engine(), st.svc))


async def _answered(pending):
    try:
        return await pending
    except UnsafeIdError as exc:
        return _error(400, exc.message, exc.fix)
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc))
    except LookupError as exc:
        return _error(404, str(exc))
    except RunnerError as exc:
        unavailable = type(exc).__name__ in ("HatchetUnavailable", "StateUnusable")
        return _error(503 if unavailable else 409, exc.message, exc.fix)


class PiecewiseJSON(JSONResponse):
    """JSON encoded a run (a list item, a key's value) at a time. Python 3.11's encoder keeps every
    token of a whole answer as its own string until the end: a page of 100 runs (150 KB) peaked at
    1.6 MB, and the heap the daemon keeps grows to such peaks."""

    def render(self, content: Any) -> bytes:
        return _dumps(content, 2).encode("utf-8")


def _dumps(value: Any, depth: int) -> str:
    if depth and isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dumps(v, depth - 1)}" for k, v in value.items()) + "}"
    if depth and isinstance(value, (list, GeneratorType)):
        return "[" + ",".join(_dumps(v, depth - 1) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _json(value: Any) -> JSONResponse | Any:
    return value if isinstance(value, JSONResponse) else PiecewiseJSON(value)


async def api_runs(request: Request):
    st = _state(request)
    q = request.query_params
    try:
        limit = int(q.get("limit", "50"))
    except ValueError:
        return _error(400, f"limit {q.get('limit')!r} is not a number", f"give 1 to {data.MAX_LIMIT}")
    try:
        before = float(q["before"]) if q.get("before") else None
    except ValueError:
        return _error(400, f"before {q.get('before')!r} is not a time",
                      "give the `older` of the page before (a run's created_at, seconds since 1970)")
    # Encoded inside the read (its thread, its error answers), a row at a time.
    return await _read(request, lambda: PiecewiseJSON(data.list_runs(
        st.engine(), st.svc, group=q.get("group", "all"), issue=q.get("issue") or None, limit=limit, before=before,
        lazy=True)))


async def api_run(request: Request):
    st = _state(request)
    run_id = request.path_params["run_id"]
    try:
        after = int(request.query_params.get("after_event", "0"))
    except ValueError:
        return _error(400, "after_event must be a number")
    found = await _read(request, lambda: data.run_detail(st.engine(), st.svc, run_id, after_event=after))
    if found is None:
        return _error(404, f"no run {run_id!r}", "the runs list (GET /api/runs) names the runs there are")
    return _json(found)


async def api_issue(request: Request):
    st = _state(request)
    issue_id = request.path_params["issue_id"]
    return _json(await _read(request, lambda: data.issue_detail(st.engine(), st.svc, issue_id)))


async def api_now(request: Request):
    st = _state(request)
    return _json(await _read(request, lambda: data.now_view(st.engine(), st.svc)))


async def api_metrics(request: Request):
    return _json(await metrics(request))


async def prometheus_metrics(request: Request):
    found = await metrics(request)
    if isinstance(found, JSONResponse):
        return found
    return PlainTextResponse(prometheus(found), media_type="text/plain; version=0.0.4; charset=utf-8")


class _BadRequest(Exception):
    """What an action endpoint answers with 400: the problem, and how to send it right."""

    def __init__(self, error: str, fix: str | None = None):
        super().__init__(error)
        self.error, self.fix = error, fix


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise _BadRequest("the body is not JSON: send {} or {\"issue_id\": ...}") from None
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    return body


def _action(act):
    """A POST that acts: its JSON body read (400 if it is not an object), `act(request, state, body)`
    run, then the console told that something changed."""

    async def endpoint(request: Request):
        try:
            done = await act(request, _state(request), await _body(request))
        except _BadRequest as exc:
            return _error(400, exc.error, exc.fix)
        _acted(request)
        return _json(done)

    endpoint.__name__ = act.__name__
    return endpoint


def _who(request: Request, body: dict[str, Any]) -> str:
    by = body.get("by")
    return str(by)[:80] if isinstance(by, str) and by.strip() else f"{actions.person()} (console)"


def _acted(request: Request) -> None:
    st = _state(request)
    st.metrics.invalidate()
    st.changed()


@_action
async def retry(request: Request, st, body: dict[str, Any]):
    return await _call(actions.retry_issue, st.svc, request.path_params["issue_id"],
                       fresh=bool(body.get("fresh")), by=_who(request, body))


@_action
async def cancel(request: Request, st, body: dict[str, Any]):
    # The runner running the run stops it; the answer does not wait for that (the page shows it).
    return await _call(actions.cancel_issue, st.svc, request.path_params["issue_id"], by=_who(request, body),
                       wait=0.0)


@_action
async def submit(request: Request, st, body: dict[str, Any]):
    issue_id = body.get("issue_id")
    if not isinstance(issue_id, str) or not issue_id:
        raise _BadRequest("no issue_id given", 'send {"issue_id": "<id>"}')
    return await _call(lambda: actions.submit_issue(st.svc, issue_id,
                                                    engine=st.engine() if st.shared_engine else None))


ROUTES = [
    Route("/api/runs", api_runs),
    Route("/api/runs/{run_id}", api_run),
    Route("/api/issues/{issue_id}", api_issue),
    Route("/api/now", api_now),
    Route("/api/metrics", api_metrics),
    Route("/metrics", prometheus_metrics),
    Route("/api/issues/{issue_id}/retry", retry, methods=["POST"]),
    Route("/api/issues/{issue_id}/cancel", cancel, methods=["POST"]),
    Route("/api/submit", submit, methods=["POST"]),
]
