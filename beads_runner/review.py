"""`review`: the commits the runner landed on the target, and one issue's whole history."""

from __future__ import annotations

import time
from typing import Any

from beads_runner.services import Services
from beads_runner.tables import table_text

from beads_runner.run_views import PROCESS, _ago, _engine, _money, _outcome_line, _run_dict, one_line


def _history_entry(run: dict[str, Any]) -> dict[str, Any]:
    return {key: run[key] for key in ("run_id", "run", "status", "phase", "title", "created_at", "finished_at",
                                      "elapsed_s", "failed_step", "error", "commit", "attempts", "sessions",
                                      "tokens", "cost")} | {"result": _outcome_line(run)}


def review_data(svc: Services, issue_id: str | None = None, since: str | None = None) -> dict[str, Any]:
    """Landed commits (found by their `Beads-Issue` trailer on the target) and, for one issue, its
    whole history. Keys (`review --json`): `target`, `since`, `issue_id`, `commits` (newest first:
    `sha`, `issue_id`, `title`, `subject`, `date`, `author`, `run_id`, `agent`, `gates`, `attempts`
    (tries of the landing run's process step; null if the run is unknown here), `duration_s`, `tokens`,
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



def commits_table(commits: list[dict[str, Any]]):
    """The landed commits as a rich table, one row each: the commit, the issue, and the title over
    what the landing took (every cell plain text, never markup)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # No styles: the CLI prints it as text. Short columns never wrap; on a narrow terminal the long ones fold.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="")
    table.add_column("commit", no_wrap=True)
    table.add_column("issue", no_wrap=True)
    table.add_column("title, then what it took", overflow="fold")
    for c in commits:
        details = [one_line(c["title"], 200), f"gates: {c['gates'] or '-'}  agent: {c['agent'] or '-'}"]
        if c["duration_s"] is not None:
            details.append(f"{c['attempts']} attempt(s), took {_ago(c['duration_s'])}, {c['tokens']:,} tokens, "
                           f"{_money(c['cost'])}")
        details.append(f"{c['date']}  run {c['run_id'] or '-'}  diff: {c['diff_command']}")
        table.add_row(Text(c["sha"][:10]), Text(c["issue_id"]), Text("\n".join(details)))
    return table


def render_review(data: dict[str, Any], *, terminal: bool = False) -> str:
    lines: list[str] = []
    commits = data["commits"]
    if not commits:
        lines.append(f"no landed commits on {data['target']}"
                     + (f" for {data['issue_id']}" if data.get("issue_id") else "")
                     + " (looked for the Beads-Issue trailer)")
    else:
        lines.append(table_text(commits_table(commits), terminal=terminal))
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
