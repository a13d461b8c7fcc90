"""`status` for people: tables of what runs, waits, is blocked and landed, drawn with rich.

The data is `run_views.collect_status`; logs and review are in `run_logs` and `review` (their
names are re-exported here, where callers have always found them).
"""

from __future__ import annotations

import io
import time
from typing import Any

from beads_runner.review import render_review, review_data
from beads_runner.run_logs import stream_logs
from beads_runner.run_views import PROCESS, _ago, _engine, _money, _outcome_line, collect_status, one_line
from beads_runner.services import Services

__all__ = ["collect_status", "render_review", "render_status", "render_text", "review_data", "stream_logs",
           "watch_status"]


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
