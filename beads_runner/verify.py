"""`beads-runner verify`: re-prove closed issues. Landed must keep meaning landed.

For each issue: it is closed, the commit carrying its `Beads-Issue` trailer is on the target, and
the close reason names that commit; with `--gates`, the configured command gates pass at that
commit (in a temporary worktree, so the checkout is never touched). Any mismatch exits 1;
`--reopen` reopens each mismatched issue with a comment saying what failed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from beads_runner.errors import ConfigError, IssueNotFound, RunnerError, TrackerError
from beads_runner.ids import require_safe_issue_id
from beads_runner.services import Services
from quality_gates import GateInput, run_suite
from quality_gates.change import ChangeError, temporary_worktree
from quality_gates.diff import DiffGate

_SHA_WORD = re.compile(r"\b[0-9a-f]{7,40}\b")


@dataclass
class Verdict:
    issue_id: str
    status: str = ""
    commit: str | None = None
    close_reason: str = ""
    gates: str = ""  # "" when not asked, else the trailer of the run (`tests=pass`)
    problems: list[str] = field(default_factory=list)
    reopened: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"issue_id": self.issue_id, "ok": self.ok, "status": self.status, "commit": self.commit,
                "close_reason": self.close_reason, "gates": self.gates or None, "problems": self.problems,
                "reopened": self.reopened}


def names_commit(reason: str, sha: str) -> bool:
    """Whether the close reason names `sha` (by an abbreviation of 7 or more hex digits)."""
    return any(sha.startswith(word) for word in _SHA_WORD.findall(reason.lower()))


def landed_issue_ids(svc: Services, since: str | None) -> list[str]:
    """Issues with a `Beads-Issue` trailer commit on the target (after `since`), oldest first, plus
    those the engine's state says it landed (so a commit that vanished from the target is found)."""
    ws = svc.workspace
    args = ["log", "--reverse", ws.base, "--format=%(trailers:key=Beads-Issue,valueonly,separator=%x2C)"]
    if since:
        args.append(f"--since={since}")
    ids: list[str] = []
    for line in ws.git(*args).splitlines():
        ids += [i.strip() for i in line.split(",") if i.strip()]
    from workflows.engine import SUCCEEDED
    from workflows.engine import existing_engine as _engine

    try:
        engine = _engine(svc)
    except RunnerError:  # Hatchet out of reach: the target's trailers are the evidence there is
        engine = None
    if engine is not None:
        cutoff = since_epoch(svc, since) if since else None
        for run in reversed(engine.runs(statuses=(SUCCEEDED,), limit=100000)):
            if (run.outcome or {}).get("sha") and (cutoff is None or run.created_at >= cutoff):
                ids.append(run.key)
    return list(dict.fromkeys(ids))


def since_epoch(svc: Services, since: str) -> float:
    """A git date ("2 days ago", "2026-11-30") as seconds since the epoch, read the way `git log` reads it."""
    out = svc.workspace.git("rev-parse", f"--since={since}").strip()
    try:
        return float(out.removeprefix("--max-age="))
    except ValueError:
        raise ConfigError(f"--since {since!r} is not a date git understands",
                          fix='use a date like "2026-11-30" or "3 days ago"') from None


def verify_issue(svc: Services, issue_id: str, *, gates: bool = False) -> Verdict:
    require_safe_issue_id(issue_id)
    v = Verdict(issue_id)
    ws = svc.workspace
    try:
        issue = svc.tracker.show(issue_id)
    except IssueNotFound:
        v.problems.append("no such issue in the tracker")
        return v
    v.status, v.close_reason = issue.status, issue.close_reason
    if issue.status != "closed":
        v.problems.append(f"the issue is {issue.status}, not closed")
    v.commit = ws.find_commit(issue_id, ws.base)
    if v.commit is None:
        v.problems.append(f"no commit with the trailer Beads-Issue: {issue_id} on {ws.target}")
        return v
    if issue.status == "closed" and not names_commit(issue.close_reason, v.commit):
        v.problems.append(f"the close reason does not name the commit {v.commit[:8]}")
    if gates:
        report = gates_at(svc, v.commit)
        v.gates = report.trailer()
        if not report.passed:
            v.problems.append(f"the gates fail at {v.commit[:8]}: {report.summary()}")
    return v


def gates_at(svc: Services, sha: str):
    """The configured command gates run at `sha`, in a temporary worktree (the diff gates measure a
    change against the target, and at a landed commit there is none to measure)."""
    commands = [g for g in svc.gates if not isinstance(g, DiffGate)]
    try:
        with temporary_worktree(svc.repo, sha) as tree:
            return run_suite(commands, GateInput(tree, target=None))
    except ChangeError as exc:
        from quality_gates import GateReport, SuiteReport

        return SuiteReport(reports=[GateReport(name="worktree", status="error", reason=str(exc))])


def reopen(svc: Services, v: Verdict) -> None:
    """Put a mismatched issue back in the queue, saying why (as `tracker.actor`)."""
    text = ("beads-runner verify found that this issue's landing cannot be proven:\n"
            + "\n".join(f"- {p}" for p in v.problems)
            + "\n\nReopened, so the work is done again (or a person sets it straight).")
    svc.tracker.comment(v.issue_id, text)
    svc.tracker.release(v.issue_id)
    v.reopened = True


def run_verify(svc: Services, ids: list[str], *, since: str | None = None, gates: bool = False,
               reopen_mismatches: bool = False) -> list[Verdict]:
    if ids and since:
        raise ConfigError("give issue ids or --since, not both", fix="drop one of them")
    targets = ids or landed_issue_ids(svc, since)
    verdicts = []
    for issue_id in targets:
        v = verify_issue(svc, issue_id, gates=gates)
        if not v.ok and reopen_mismatches and v.status:
            try:
                reopen(svc, v)
            except TrackerError as exc:
                v.problems.append(f"could not reopen: {exc.message}")
        verdicts.append(v)
    return verdicts


def render_verdicts(verdicts: list[Verdict], gates: bool):
    from rich import box
    from rich.table import Table

    t = Table(title="verify", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("issue", "status", "commit", "close reason", *(["gates"] if gates else []), "result"):
        t.add_column(col, overflow="fold")
    for v in verdicts:
        reason_ok = "names it" if v.commit and names_commit(v.close_reason, v.commit) else "—"
        result = "ok" if v.ok else "MISMATCH: " + "; ".join(v.problems) + (" (reopened)" if v.reopened else "")
        t.add_row(v.issue_id, v.status or "?", (v.commit or "—")[:10], reason_ok, *([v.gates or "—"] if gates else []),
                  result)
    return t
