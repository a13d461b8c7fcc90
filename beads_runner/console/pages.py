"""The console's pages: Now, Runs, a run, an issue, Charts. Server-rendered (Jinja2) from the same
data as the JSON API; `?partial=1` answers only the page's live part, which `static/console.js`
swaps in when the event stream says something changed (no reload, no build step)."""

from __future__ import annotations

import time
from pathlib import Path

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from beads_runner.console import data
from beads_runner.console.api import _read, metrics
from beads_runner.console.metrics import bar_chart
from beads_runner.run_views import _ago, _money

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters["ago"] = _ago
templates.env.filters["money"] = _money
templates.env.filters["clock"] = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"
templates.env.filters["short"] = lambda text, n=80: "" if text is None else (
    str(text) if len(str(text)) <= n else str(text)[: n - 1] + "…")


def _render(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    partial = request.query_params.get("partial") == "1"
    context.update(partial=partial, engine_kind=request.app.state.engine_kind,
                   repo=str(request.app.state.console.svc.repo), now=time.time())
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _failed(request: Request, found) -> HTMLResponse | None:
    if isinstance(found, JSONResponse):
        import json

        body = json.loads(found.body)
        return _render(request, "error.html", status_code=found.status_code, error=body.get("error"),
                       fix=body.get("fix"))
    return None


async def now_page(request: Request):
    st = request.app.state.console
    found = await _read(request, lambda: data.now_view(st.engine(), st.svc))
    return _failed(request, found) or _render(request, "now.html", d=found, page="now")


async def runs_page(request: Request):
    st = request.app.state.console
    q = request.query_params
    group = q.get("group", "all")
    try:
        limit = int(q.get("limit", "50"))
    except ValueError:
        limit = 50
    try:
        before = float(q["before"]) if q.get("before") else None
    except ValueError:
        return _render(request, "error.html", status_code=400, error=f"before {q.get('before')!r} is not a time",
                       fix="follow the page's “older” link (it gives a run's created_at)")
    found = await _read(request, lambda: data.list_runs(st.engine(), st.svc, group=group, issue=q.get("issue") or None,
                                               limit=limit, before=before))
    return _failed(request, found) or _render(request, "runs.html", d=found, groups=list(data.GROUPS),
                                              page="runs", issue=q.get("issue") or "")


async def run_page(request: Request):
    st = request.app.state.console
    run_id = request.path_params["run_id"]
    found = await _read(request, lambda: data.run_detail(st.engine(), st.svc, run_id))
    if found is None:
        return _render(request, "error.html", status_code=404, error=f"no run {run_id!r}",
                       fix="the Runs page lists the runs there are")
    return _failed(request, found) or _render(request, "run.html", r=found, page="runs")


async def issue_page(request: Request):
    st = request.app.state.console
    issue_id = request.path_params["issue_id"]
    found = await _read(request, lambda: data.issue_detail(st.engine(), st.svc, issue_id))
    return _failed(request, found) or _render(request, "issue.html", d=found, page="issues")


async def charts_page(request: Request):
    found = await metrics(request)
    if isinstance(found, JSONResponse):
        return _failed(request, found)
    days = found["days"]
    charts = {
        "landed": bar_chart([(d["day"][5:], d["landed"]) for d in days]),
        "handed_over": bar_chart([(d["day"][5:], d["handed_over"]) for d in days]),
        "cost": bar_chart([(d["day"][5:], round(d["cost_usd"], 4)) for d in days], unit=" $"),
        "sessions": bar_chart([(time.strftime("%H:%M", time.gmtime(s["at"])), s["in_use"])
                               for s in found["sessions"]["over_time"]]),
    }
    return _render(request, "charts.html", m=found, charts={k: Markup(v) for k, v in charts.items()}, page="charts")


ROUTES = [
    Route("/", now_page),
    Route("/runs", runs_page),
    Route("/runs/{run_id}", run_page),
    Route("/issues/{issue_id}", issue_page),
    Route("/charts", charts_page),
]
