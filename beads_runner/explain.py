"""`beads-runner explain <id>`: the one reason an issue is or is not being worked on now, and what
would change it.

The answer comes from the three owners of state, read in the order that decides: the engine
(a run in flight, parked, or ended), the tracker (closed, claimed by someone else, not ready),
and the parks (a provider's quota, its credentials, the daily budget). `run_reason` needs the
engine only, so `status --json` gives every run the same reason codes.

Reason codes (stable, for scripts and the console):

| code | meaning |
|---|---|
| `running` | a step runs now (step, try, session) |
| `retry_wait` | a try failed; the next one starts at `retry_at` |
| `waiting_for_session` | claimed and checked; waits for a session slot (`queue_position`) |
| `parked` | no session may start: a provider's quota or credentials, or the daily budget (`until`) |
| `cancelling` | a person asked to cancel it; the runner is stopping it |
| `with_person` | handed to a person (`step`, `reason`, `branch` kept); `recorded_locally` if the tracker refused |
| `landed` | landed (`commit`) and closed |
| `closed` | closed, not by this runner's landing |
| `superseded` | a person's word ended the run (closed, taken over or deferred while it ran) |
| `skipped` | its last run stopped without working on it (`reason`) |
| `blocked_by` | not ready: these blockers are open |
| `not_work` | an epic or a type the runner does not implement |
| `deferred` | deferred until a time |
| `claimed_by_other` | someone else holds it (`assignee`, `since`) |
| `claimed_no_run` | in progress under our actor with no run: taken back at the next start |
| `untrusted` | `tracker.require_labels` / `tracker.trusted_creators` leave it out |
| `held` | its status (not open) keeps it out of the queue |
| `ready` | ready; the next poll of a running `beads-runner start` claims it |
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from beads_runner.errors import IssueNotFound, RunnerError
from beads_runner.ids import is_safe_issue_id
from beads_runner.parking import Park, parks_in_effect
from beads_runner.services import Services
from beads_runner.tracker.base import NEEDS_HUMAN_LABEL, Issue
from workflows.engine import ACTIVE, FAILED, FAILING, QUEUED, RUNNING, SUCCEEDED, Engine, RunView
from workflows.task_flow import did_no_work

PROCESS = "process"


@dataclass
class Reason:
    code: str
    summary: str  # one sentence: what is going on
    change: str  # what would change it
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "summary": self.summary, "change": self.change, **self.details}


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def parked_reason(park: Park, extra: dict[str, Any] | None = None) -> Reason:
    until = "until `beads-runner resume`" if park.until is None else f"until {_when(park.until)}"
    return Reason("parked", f"parked {until}: {park.reason}", park.what_would_change_it(),
                  {"park": park.as_dict(), "until": park.until, "why": park.reason, "kind": park.kind,
                   **(extra or {})})


def handover_reason(run: RunView, branch: str | None = None) -> Reason:
    """A run that ended with its issue handed to a person (or is being handed over now)."""
    step = run.failed_step
    details = {"step": step, "reason": run.error, "run_id": run.id, "branch": branch,
               "recorded_locally": bool(run.handler_error),
               "tracker_error": run.handler_error}
    if run.status == FAILING:
        return Reason("with_person", f"failed at {step} ({run.error}); being handed to a person now",
                      "`beads-runner retry <id>` once the handover is done", {**details, "handing_over": True})
    where = f"; branch {branch} kept" if branch else ""
    if run.handler_error:
        summary = (f"failed at {step}: {run.error}{where}. The tracker refused the handover "
                   f"({run.handler_error}), so it is recorded here only")
    else:
        summary = f"handed to a person after failing at {step}: {run.error}{where}"
    return Reason("with_person", summary,
                  "fix what the reason says (or not), then `beads-runner retry <id>` (`--fresh` to start over "
                  "from the target)", details)


def run_reason(run: RunView, *, now: float | None = None, parks: list[Park] | None = None,
               queue_position: int | None = None, branch: str | None = None) -> Reason:
    """Why a run is where it is, from the engine alone (plus the parks in effect)."""
    now = time.time() if now is None else now
    parks = parks or []
    base = {"run_id": run.id}
    if run.status in (QUEUED, RUNNING):
        if run.cancel_requested:
            return Reason("cancelling", f"{run.cancel_requested} asked to cancel it; the runner is stopping it",
                          "nothing: it goes to a person with its branch kept", base)
        step = run.current_step
        if step is None:
            return Reason("running", "its run is between steps", "nothing: it goes on by itself", base)
        tries = {"step": step.name, "attempt": step.attempt, "max_attempts": step.max_attempts, **base}
        if step.status == RUNNING:
            session = (step.notes or {}).get("session_id")
            extra = f", session {session}" if session else ""
            return Reason("running", f"running {step.name}, try {step.attempt} of {step.max_attempts}{extra}",
                          f"nothing: it lands or fails by itself (`beads-runner cancel {run.key}` stops it)",
                          {**tries, "session_id": session, "started_at": step.started_at})
        if step.name == PROCESS and parks:
            return parked_reason(parks[0], {**tries, "last_error": step.error})
        if step.not_before > now and step.attempt > 0:
            return Reason("retry_wait", f"{step.name} failed on try {step.attempt} of {step.max_attempts} "
                          f"({step.error}); the next try starts at {_when(step.not_before)}",
                          "nothing: it retries by itself", {**tries, "retry_at": step.not_before,
                                                             "last_error": step.error})
        if step.name == PROCESS:
            place = f" (number {queue_position} in the queue)" if queue_position else ""
            return Reason("waiting_for_session", f"claimed and checked; waiting for a free session slot{place}",
                          "a running session ends (engine.max_sessions caps them)",
                          {**tries, "queue_position": queue_position})
        return Reason("running", f"{step.name} is about to start", "nothing: it goes on by itself", tries)
    if run.status in (FAILING, FAILED):
        return handover_reason(run, branch)
    if run.status == SUCCEEDED:
        out = run.outcome or {}
        if out.get("superseded"):
            return Reason("superseded", f"a person's word ended its run: {out.get('superseded')}",
                          "reopen it (or give it back to the runner's actor) for the runner to take it again",
                          {**base, "reason": out.get("superseded")})
        if did_no_work(out):
            return Reason("skipped", f"its last run stopped without working on it: {out.get('reason')}",
                          "what the reason names; a running `beads-runner start` picks it up when it is ready",
                          {**base, "reason": out.get("reason")})
        return Reason("landed", f"landed as {str(out.get('sha'))[:12]} on {out.get('target')}",
                      "nothing: it is done", {**base, "commit": out.get("sha"), "target": out.get("target")})
    return Reason(run.status, f"its last run ended {run.status}: {run.error or ''}".rstrip(": "),
                  "reopen it for the runner to take it again", base)


def queue_positions(engine: Engine) -> dict[str, int]:
    """Run id → place among runs waiting for a session (the engine starts the oldest first)."""
    waiting = []
    for run in engine.runs(statuses=(QUEUED, RUNNING), limit=1000):
        step = run.current_step
        if step is None or step.name != PROCESS or step.status != "pending":
            continue
        if not run.cancel_requested:
            waiting.append(run)
    waiting.sort(key=lambda r: r.created_at)
    return {run.id: n for n, run in enumerate(waiting, 1)}


def trust_problem(issue: Issue, tracker_cfg, actor: str) -> str | None:
    """Why the trust settings leave this issue out, or None (also None when none are set)."""
    required = list(tracker_cfg.require_labels)
    creators = list(tracker_cfg.trusted_creators)
    if not required and not creators:
        return None
    ours = {actor, f"{actor}-agent"}
    if issue.created_by in ours and not required:
        return (f"created by {issue.created_by} (the runner or its agent) and tracker.require_labels is empty, "
                "so no person's label can vouch for it")
    missing = [label for label in required if label not in issue.labels]
    if missing:
        return f"it lacks the label(s) {', '.join(missing)} (tracker.require_labels)"
    if creators and issue.created_by not in creators and issue.created_by not in ours:
        return f"created by {issue.created_by or 'an unknown actor'}, not one of tracker.trusted_creators"
    return None


def _branch_kept(svc: Services, issue_id: str) -> str | None:
    try:
        ws = svc.workspace
        branch = ws.branch(issue_id)
        return branch if ws.rev(f"refs/heads/{branch}") is not None else None
    except RunnerError:
        return None


def explain(svc: Services, issue_id: str, *, engine: Engine | None = None, now: float | None = None) -> Reason:
    """The one reason `issue_id` is or is not being worked on now. Raises RunnerError for an issue
    the tracker does not know."""
    from workflows.engine import existing_engine as _engine

    now = time.time() if now is None else now
    if not is_safe_issue_id(issue_id):
        return Reason("refused", f"the id {issue_id!r} cannot name a branch or a path, so the runner never works "
                      "on it", "give the issue a plain id (letters, digits, '-', '_', '.')")
    try:
        issue = svc.tracker.show(issue_id)
    except IssueNotFound as exc:
        raise RunnerError(f"no issue {issue_id!r}: {exc.message}", fix="check the id (`bd list`)") from None
    engine = engine if engine is not None else _engine(svc)
    runs = engine.runs(key=issue_id, limit=1) if engine is not None else []
    run = runs[0] if runs else None
    actor = svc.tracker.actor
    parks = parks_in_effect(svc.config, svc.state_dir, now)
    base = {"issue_id": issue_id, "title": issue.title, "status": issue.status, "run_id": run.id if run else None}

    def done(reason: Reason) -> Reason:
        reason.details = {**base, **reason.details}
        return reason

    if run is not None and run.status in ACTIVE:
        try:
            position = queue_positions(engine).get(run.id) if run.status != FAILING else None
        except RunnerError:
            position = None  # a remote engine that did not answer: the reason stands without it
        return done(run_reason(run, now=now, parks=parks, queue_position=position,
                               branch=_branch_kept(svc, issue_id)))
    if run is not None and (run.outcome or {}).get("superseded"):
        return done(run_reason(run, now=now))
    if issue.status == "closed":
        out = (run.outcome or {}) if run is not None and run.status == SUCCEEDED else {}
        if out.get("sha"):
            return done(run_reason(run, now=now))
        if issue.close_reason.startswith("Landed "):
            return done(Reason("landed", issue.close_reason, "nothing: it is done",
                               {"commit": issue.close_reason.split()[1]}))
        return done(Reason("closed", f"closed: {issue.close_reason or 'no reason given'}",
                           "reopen it for the runner to take it again", {"close_reason": issue.close_reason}))
    handed_over = run is not None and run.status == FAILED
    locally = handed_over and run.handler_error
    if NEEDS_HUMAN_LABEL in issue.labels or locally or (handed_over and issue.status == "blocked"):
        if run is not None and run.status == FAILED:
            return done(handover_reason(run, _branch_kept(svc, issue_id)))
        return done(Reason("with_person", f"labelled {NEEDS_HUMAN_LABEL} (status {issue.status})",
                           "`beads-runner retry <id>`, or remove the label and reopen it",
                           {"branch": _branch_kept(svc, issue_id)}))
    if issue.status == "in_progress":
        if issue.assignee and issue.assignee != actor:
            since = _parse_time(issue.started_at) or _parse_time(issue.updated_at)
            return done(Reason("claimed_by_other", f"claimed by {issue.assignee} since {_when(since)}",
                               f"{issue.assignee} releases or finishes it (the runner never takes another's claim)",
                               {"assignee": issue.assignee, "since": since}))
        return done(Reason("claimed_no_run", f"in progress under {actor} but no run is working on it "
                           "(a runner stopped between claiming and starting)",
                           "the next `beads-runner start` takes it back and runs it", {"assignee": issue.assignee}))
    if issue.status != "open":
        return done(Reason("held", f"its status is {issue.status}, so it is not offered as ready work",
                           "set it back to open", {}))
    if not issue.is_work:
        return done(Reason("not_work", f"a {issue.issue_type} is not work the runner implements",
                           "nothing: its child issues are the work" if issue.issue_type == "epic"
                           else "change its type if it is work for an agent", {"issue_type": issue.issue_type}))
    deferred = _parse_time(issue.defer_until)
    if deferred is not None and deferred > now:
        return done(Reason("deferred", f"deferred until {_when(deferred)}", "the time passes, or undefer it",
                           {"until": deferred}))
    if issue.open_blockers:
        names = ", ".join(f"{b.id} ({b.status or 'unknown'})" for b in issue.open_blockers)
        return done(Reason("blocked_by", f"not ready: blocked by {names}", "close the blocker(s) first",
                           {"blockers": [b.model_dump() for b in issue.open_blockers]}))
    problem = trust_problem(issue, svc.config.tracker, actor)
    if problem:
        return done(Reason("untrusted", f"not claimed: {problem}",
                           "a person adds the label(s), or changes the tracker.* trust settings", {}))
    if parks:
        return done(parked_reason(parks[0]))
    last = ""
    if run is not None and run.status == SUCCEEDED and did_no_work(run.outcome):
        last = f" (its last run stopped: {(run.outcome or {}).get('reason')})"
    return done(Reason("ready", f"ready{last}; a running `beads-runner start` claims it at its next poll",
                       "start the runner if none runs (`beads-runner start`)", {}))


def render(reason: Reason) -> str:
    d = reason.details
    head = f"{d.get('issue_id', '')}: {reason.code}".strip(": ")
    lines = [head, f"  {reason.summary}", f"  what would change it: {reason.change}"]
    if d.get("run_id"):
        lines.append(f"  run: {d['run_id']}")
    return "\n".join(lines)
