"""The process step: the agent's session in the issue's worktree, then the fix loop (the runner gates
the result and feeds a failing report back to the same session), within the run's session budget;
a provider's limit parks the run instead of failing it."""

from __future__ import annotations

import time

from beads_runner.actions import RetryNote, retry_message
from beads_runner.agent.base import SessionRequest, TokenUsage
from beads_runner.parking import Parking, provider_scope
from beads_runner.failpoints import failpoint
from beads_runner.ids import require_safe_issue_id
from beads_runner.jsonfile import JsonFile
from beads_runner.prompt import load_template, render_prompt
from beads_runner.reconcile import IssueWatch
from beads_runner.safe_text import one_line
from beads_runner.services import Services
from beads_runner.tracker.base import Issue
from quality_gates import SuiteReport
from workflows.spec import StepContext, StepFailed, StepParked
from workflows.steps import (
    CheckDepsOutput, ProcessOutput, TaskInput, as_step_failure, gate_suite, refuse_moved_yardstick, step_services,
)


class SessionMemory(JsonFile):
    """The issue's agent session, on disk beside the worktree: written as soon as the session has
    an id, so an attempt after a crash, a stall or a failure continues that session (with its whole
    context) instead of starting from nothing. Engine-neutral: a file, not engine state."""

    def __init__(self, svc: Services, issue_id: str):
        super().__init__(svc.state_dir / "sessions" / f"{require_safe_issue_id(issue_id)}.json")

    def save(self, **fields) -> None:
        self.write({**self.load(), **fields, "updated": time.time()})


def continue_message(reason: str, changed: list[str]) -> str:
    files = ", ".join(changed[:30]) + (" …" if len(changed) > 30 else "") if changed else "none yet"
    return (
        f"Your previous attempt at this issue did not finish: {reason}.\n"
        f"The worktree still holds the changes made so far (files changed: {files}).\n"
        "Continue the task from where it stopped; do not start over. Finish with a short summary of "
        "the whole change."
    )


@as_step_failure
def process(inp: TaskInput, ctx: StepContext) -> ProcessOutput:
    """One agent session in the issue's own worktree. Its edits stay there whatever happens, and a
    later attempt continues the same session from them."""
    deps: CheckDepsOutput = ctx.parent("check-deps")
    if not deps.proceed or deps.issue is None:
        return ProcessOutput(no_work=True)
    svc = step_services(inp)
    issue = deps.issue
    watch = IssueWatch(svc.tracker, issue.id, interval=svc.config.tracker.poll_interval, cancel=ctx.cancel)
    if watch.check_now():  # a person took it while the run waited for a session
        return _superseded(ctx, watch.reason)
    with svc.workspace.worktree_lock(issue.id), watch:  # one worktree, one agent
        try:
            return _process(inp, ctx, svc, issue, watch)
        except StepFailed:
            if watch.reason:  # the session or a gate was stopped because a person took the issue
                return _superseded(ctx, watch.reason)
            raise


def _superseded(ctx: StepContext, reason: str | None) -> ProcessOutput:
    ctx.log("run superseded: nothing lands, the issue is left as the person set it", reason=reason)
    ctx.note(superseded=reason)
    return ProcessOutput(no_work=True, superseded=reason or "superseded")


def _process(inp: TaskInput, ctx: StepContext, svc: Services, issue: Issue, watch: IssueWatch) -> ProcessOutput:
    ws = svc.workspace
    worktree = ws.ensure_worktree(issue.id)
    memory = SessionMemory(svc, issue.id)
    earlier = memory.load()
    changed_before = ws.changed_files(issue.id)
    resume_id = earlier.get("session_id") if earlier.get("run_id") == ctx.run_id else None
    if resume_id:
        prompt = continue_message(earlier.get("last_reason") or "the runner was stopped or crashed", changed_before)
    else:
        prompt = render_prompt(issue, load_template(svc.state_dir), ws.target)
        prompt += retry_message(RetryNote(svc.state_dir, issue.id).load())
        if changed_before:
            prompt += ("\n\nNote: this worktree already holds changes from an earlier attempt ("
                       + ", ".join(changed_before[:30]) + "). Review them and build on them.\n")
    request = SessionRequest(
        issue_id=issue.id, prompt=prompt, workdir=worktree, session_id=resume_id,
        title=one_line(f"{issue.id}: {issue.title}", 120),
        log_path=svc.run_dir(ctx.run_id) / f"agent-{ctx.attempt}.ndjson",
    )
    seen = {"session": resume_id, "edited": False}

    def on_event(event: dict) -> None:
        sid = event.get("sessionID")
        if sid and sid != seen["session"]:
            seen["session"] = sid
            memory.save(session_id=sid, run_id=ctx.run_id, last_reason=None)
            ctx.note(session_id=sid)
        if not seen.get("through") and event.get("type") in ("step_start", "text", "tool_use", "step_finish"):
            seen["through"] = True  # the provider answered: sessions waiting on a probe may start
            Parking(svc.state_dir).got_through(provider_scope(svc.config))
        if event.get("type") == "provider_retry":  # agent.mode = "server": the provider fails, opencode retries
            ctx.log("model provider failed, opencode retries", provider_retry=event.get("attempt"),
                    message=event.get("message"), next_ms=event.get("next"))
        if event.get("type") == "tool_use" and not seen["edited"]:
            seen["edited"] = True
            failpoint("session-edited")

    # Sessions are counted per run, across the step's retries (kept beside the session id), so a
    # run never has more than agent.max_attempts sessions; one cancelled by a shutdown, or stopped by a
    # provider's limit (parked), does not count.
    limit = svc.config.agent.max_attempts
    used = int(earlier.get("sessions") or 0) if earlier.get("run_id") == ctx.run_id else 0
    if earlier.get("run_id") != ctx.run_id:  # an earlier run's session and count are not this run's
        memory.save(run_id=ctx.run_id, session_id=None, sessions=0, last_reason=None)
    totals = {"sessions": used, "tokens": 0, "cost": 0.0}
    usage = {"tokens": TokenUsage()}  # summed over the run's sessions, as cost is

    def session(req: SessionRequest):
        if totals["sessions"] >= limit:
            raise StepFailed(f"this run has used its agent.max_attempts ({limit}) sessions",
                             retryable=False, detail=earlier.get("last_reason") or "")
        ctx.log("session starting", worktree=str(worktree), attempt=ctx.attempt, continues=req.session_id)
        result = svc.agent.run(req, cancel=watch.stop, on_event=on_event)
        if not result.cancelled and result.limit is None:  # a provider's limit is not the run's try
            totals["sessions"] += 1
            memory.save(run_id=ctx.run_id, sessions=totals["sessions"])
        totals["tokens"] += result.tokens.total
        usage["tokens"] = usage["tokens"] + result.tokens
        totals["cost"] += result.cost
        ctx.note(session_id=result.session_id, tokens=totals["tokens"], cost=totals["cost"],
                 sessions=totals["sessions"], duration_s=round(result.duration_s, 3), ok=result.ok,
                 reason=result.reason, continued=bool(req.session_id))
        ctx.log("session finished", ok=result.ok, reason=result.reason, session_id=result.session_id,
                tokens=result.tokens.total, cost=result.cost, duration_s=round(result.duration_s, 2))
        if result.limit is not None:
            park_session(svc, ctx, issue.id, result, memory)
        if result.ok or result.events:
            Parking(svc.state_dir).got_through(provider_scope(svc.config))
        if not result.ok:
            if req.session_id and result.events == 0:
                # the session could not be continued at all: the next attempt starts afresh
                memory.save(session_id=None, run_id=ctx.run_id, last_reason=None)
            elif result.session_id:
                memory.save(session_id=result.session_id, run_id=ctx.run_id, last_reason=result.reason)
            # A cancelled session (shutdown, step timeout) is always worth another attempt later.
            raise StepFailed(f"agent session failed: {result.reason}", retryable=result.retryable or result.cancelled,
                             detail=result.output_tail or result.summary)
        if not ws.changed_files(issue.id):
            memory.save(session_id=result.session_id, run_id=ctx.run_id,
                        last_reason="the session ended without changing any file, but the issue needs a change")
            raise StepFailed("the agent session ended without changing any file", retryable=True,
                             detail=result.summary)
        return result

    byproducts: dict[str, str | None] = {}  # what the gates created or changed: never committed
    latest: dict[str, dict[str, str | None]] = {}

    def run_gates() -> SuiteReport:
        before = ws.snapshot(issue.id)
        report = gate_suite(svc, issue, worktree, cancel=watch.stop, run_id=ctx.run_id)
        latest["after"] = after = ws.snapshot(issue.id)
        byproducts.update({p: h for p, h in after.items() if before.get(p, "") != h})
        if watch.reason:
            raise StepFailed(f"superseded: {watch.reason}", retryable=False)
        refuse_moved_yardstick(report)
        return report

    result = session(request)
    # The fix loop: the runner runs the gates; while they fail and sessions remain, the same session
    # gets the report and fixes its change. verify re-checks whatever tree comes out of this.
    report = run_gates()
    while not report.passed and totals["sessions"] < limit:
        ctx.log("gates failed, the session gets the report", gates=report.trailer(), sessions=totals["sessions"])
        result = session(request.model_copy(update={
            "session_id": result.session_id, "prompt": fix_message(report)}))
        report = run_gates()
    if not report.passed:
        memory.save(session_id=result.session_id, run_id=ctx.run_id, last_reason="the quality gates still fail")
        raise StepFailed(f"quality gates still fail after {totals['sessions']} session(s): {report.summary()}",
                         retryable=False, detail=report.render_text())
    now = latest["after"]  # the worktree has not changed since the last gate run
    # The agent's files: every change, less what the gates made and nobody touched since.
    agent_files = sorted(p for p, h in now.items() if p not in byproducts or byproducts[p] != h)
    if byproducts:
        ctx.log("left out of the commit: made by the gates", files=sorted(set(now) - set(agent_files))[:20])
    return ProcessOutput(
        session_id=result.session_id, summary=result.summary, tokens=usage["tokens"], cost=totals["cost"],
        duration_s=result.duration_s, changed_files=agent_files, worktree=str(worktree),
        branch=ws.branch(issue.id), sessions=totals["sessions"], gate_report=report,
        gated_tree=ws.tree_id(issue.id),
    )


def park_session(svc: Services, ctx: StepContext, issue_id: str, result, memory: SessionMemory) -> None:
    """The provider refused the session for a reason no retry beats soon (its quota, the credentials):
    park the provider (no new session starts until the reset, or `beads-runner resume`) and put the
    step back without spending an attempt. The session is continued when the provider is back."""
    limit = result.limit or {}
    agent = svc.config.agent
    park, new = Parking(svc.state_dir).park(
        provider_scope(svc.config), limit.get("kind") or "quota", limit.get("message") or result.reason,
        reset_at=limit.get("reset_at"), backoff=agent.park_backoff, backoff_max=agent.park_max,
        issue_id=issue_id, run_id=ctx.run_id)
    if result.session_id:
        memory.save(session_id=result.session_id, run_id=ctx.run_id,
                    last_reason=f"the provider stopped the session ({park.kind}); it is available again")
    ctx.log("provider limit: parked", kind=park.kind, until=park.until, scope=park.scope, new=new,
            message=(limit.get("message") or "")[:300])
    when = "until `beads-runner resume`" if park.until is None else \
        f"until {time.strftime('%H:%M:%S UTC', time.gmtime(park.until))}"
    raise StepParked(f"parked {when}: {park.kind} limit of {park.scope}: {limit.get('message') or result.reason}",
                     until=park.until, detail=result.output_tail)


def fix_message(report: SuiteReport) -> str:
    return (
        "The runner ran the project's quality gates on your change and they fail:\n\n"
        f"{report.render_text()}\n\n"
        "Fix what your change broke (failures listed as pre-existing were there before you and are not "
        "yours to fix). Keep the change focused on the issue, then finish with a short summary of the "
        "whole change."
    )
