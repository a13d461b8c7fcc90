"""The task workflow, written once: check-deps → process → verify → commit.

Plain functions over pydantic models. Each engine (embedded or Hatchet) runs these very
functions with the policies in `TASK_FLOW`. Every step is idempotent: re-run after a crash it
finds what was already done and goes on.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field

from beads_runner.actions import RetryNote, retry_message
from beads_runner.agent.base import SessionRequest, TokenUsage
from beads_runner.parking import Parking, provider_scope
from beads_runner.failpoints import failpoint
from beads_runner.errors import (
    ClaimConflict, IssueNotFound, RunnerError, TrackerBusy, TrackerError, TrackerUnavailable, UnsafeIdError,
)
from beads_runner.ids import require_safe_issue_id
from beads_runner.prompt import load_template, render_prompt
from beads_runner.reconcile import IssueWatch, check_issue
from beads_runner.safe_text import one_line
from beads_runner.services import Services, services_for
from beads_runner.tracker.base import Issue
from beads_runner.workspace import LandingRefused, WorktreeBusy, cancel_with, trailer_message
from quality_gates import GateInput, SuiteReport, run_suite
from quality_gates.test_integrity import collected_check
from quality_gates.yardstick import allow_by_labels, handover_reason, moved_yardstick
from workflows.spec import StepContext, StepDeferred, StepFailed, StepParked, StepSpec, WorkflowSpec

WORKFLOW_NAME = "beads-task-execution"
SESSION_KEY = "opencode"  # the concurrency key every agent session shares


def did_no_work(outcome: dict | None) -> bool:
    """Whether a run's outcome (the commit step's output, as stored) says nothing was worked on:
    `no_work`, or `skipped` as earlier releases wrote it."""
    return bool(outcome and (outcome.get("no_work") or outcome.get("skipped")))


class TaskInput(BaseModel):
    issue_id: str
    repo: str  # absolute path of the repository (on the machine running the step)


class CheckDepsOutput(BaseModel):
    proceed: bool
    reason: str = ""
    issue: Issue | None = None


class ProcessOutput(BaseModel):
    # Nothing was worked on (the issue not ours, or a person's word): not `skipped`, which Hatchet
    # reserves for a task it skipped itself (`Context.was_skipped`); outputs written as `skipped` by
    # earlier releases still read.
    no_work: bool = Field(default=False, validation_alias=AliasChoices("no_work", "skipped"))
    session_id: str | None = None
    summary: str = ""
    tokens: TokenUsage = Field(default_factory=TokenUsage)
    cost: float = 0.0
    duration_s: float = 0.0
    changed_files: list[str] = Field(default_factory=list)
    worktree: str = ""
    branch: str = ""
    sessions: int = 0  # the first session and the fixes fed the gate report
    gate_report: SuiteReport | None = None  # the gates the runner ran in the fix loop ...
    gated_tree: str | None = None  # ... on exactly this tree
    superseded: str = ""  # a person took the issue while the run was in flight: why (nothing lands)


class VerifyOutput(BaseModel):
    no_work: bool = Field(default=False, validation_alias=AliasChoices("no_work", "skipped"))
    superseded: str = ""
    report: SuiteReport = Field(default_factory=SuiteReport)


class CommitOutput(BaseModel):
    no_work: bool = Field(default=False, validation_alias=AliasChoices("no_work", "skipped"))
    reason: str = ""  # why no work was done
    sha: str = ""
    target: str = ""
    close_reason: str = ""
    rebased: bool = False
    already_landed: bool = False
    superseded: str = ""  # the run stopped because a person took the issue: why


def _services(inp: TaskInput) -> Services:
    # On a Hatchet worker the clone may live elsewhere than on the machine that submitted the run.
    return services_for(os.environ.get("BEADS_RUNNER_REPO") or inp.repo)


def gate_suite(svc: Services, issue: Issue | None, path, *, cancel, run_id: str) -> SuiteReport:
    """The target's gates on `path`, with the protection gates the issue's labels allow passed."""
    inp = GateInput(Path(path), target=svc.config.land.target)
    log_dir = svc.run_dir(run_id)
    report = run_suite(svc.gates, inp, cancel=cancel, log_dir=log_dir)
    y = svc.config.yardstick
    if y.enabled:
        extra = collected_check(report, svc.gates, inp, label=y.tests_label, cache=svc.state_dir / "test-counts",
                                cancel=cancel, log_dir=log_dir)
        if extra is not None:
            report = SuiteReport(reports=[*report.reports, extra])
    return allow_by_labels(report, issue.labels if issue else [], gates_label=y.gates_label,
                           tests_label=y.tests_label)


def refuse_moved_yardstick(report: SuiteReport) -> None:
    """A change to the yardstick (or to existing tests) goes to a person, never back to the agent:
    no fix session, no retry, and the comment names the files and what changed."""
    if moved_yardstick(report):
        raise StepFailed(handover_reason(report), retryable=False, detail=report.render_text())


UNWRITABLE_FIX = "make .beads-runner/ writable by this user (free space, a writable mount)"


def _in_runner_state(inp: TaskInput, filename: object) -> bool:
    """Is `filename` the runner's own state (not an agent's worktree, whose files are the agent's)?"""
    if not filename:
        return False
    state = _services(inp).state_dir.resolve()
    path = Path(os.fsdecode(filename) if isinstance(filename, bytes) else str(filename)).resolve()
    return path.is_relative_to(state) and not path.is_relative_to(state / "worktrees")


def _as_step_failure(fn: Callable[[TaskInput, StepContext], BaseModel]):
    """Turn the runner's own errors into StepFailed with the right retry decision."""

    @functools.wraps(fn)
    def wrapper(inp: TaskInput, ctx: StepContext) -> BaseModel:
        try:
            with cancel_with(ctx.cancel):  # the step's timeout or a stop ends a git call blocked in it
                return fn(inp, ctx)
        except StepFailed:
            raise
        except WorktreeBusy as exc:  # another runner's agent, alive if stopped: wait for it, attempts intact
            raise StepDeferred(exc.message, detail=exc.fix or "") from exc
        except UnsafeIdError as exc:
            raise StepFailed(exc.message, retryable=False) from exc
        except TrackerBusy as exc:
            raise StepFailed(f"tracker busy: {exc.message}", retryable=True) from exc
        except LandingRefused as exc:
            raise StepFailed(exc.message, retryable=False, detail=exc.fix or "") from exc
        except (IssueNotFound, TrackerUnavailable) as exc:
            raise StepFailed(f"tracker: {exc.message}", retryable=False, detail=exc.fix or "") from exc
        except TrackerError as exc:
            # An error object, a refused write: the step is idempotent, so another try costs nothing
            # and may well succeed; after the last one the issue goes to a person with bd's words.
            raise StepFailed(f"tracker: {exc.message}", retryable=True, detail=exc.fix or "") from exc
        except RunnerError as exc:
            # Git and agent problems: a lock left behind, a transient failure; a retry may help.
            raise StepFailed(exc.message, retryable=True, detail=exc.fix or "") from exc
        except sqlite3.Error as exc:  # the engine's own state, written by the step (notes, events)
            raise StepDeferred(f"cannot write the run state: {exc}", detail=UNWRITABLE_FIX) from exc
        except OSError as exc:
            if _in_runner_state(inp, exc.filename):
                # The machine, not the issue: .beads-runner/ made read-only, a full disk. Said plainly
                # (no traceback) and tried again later without spending a try: nothing is lost, and
                # `start` itself stops on the same error with its fix.
                raise StepDeferred(f"cannot write {exc.filename}: {exc.strerror or exc}",
                                   detail=UNWRITABLE_FIX) from exc
            raise StepFailed(f"{type(exc).__name__}: {exc}", retryable=True) from exc

    return wrapper


@_as_step_failure
def check_deps(inp: TaskInput, ctx: StepContext) -> CheckDepsOutput:
    """Re-read the issue and its blockers and hold the claim; stop (not fail) if it is not ours to do."""
    require_safe_issue_id(inp.issue_id)
    svc = _services(inp)
    tracker = svc.tracker
    issue = tracker.show(inp.issue_id)
    failpoint("check-deps")
    mine = issue.status == "in_progress" and issue.assignee == tracker.actor
    if not mine:
        if issue.status == "open" and issue.assignee in ("", tracker.actor):
            try:
                issue = tracker.claim(inp.issue_id)
            except ClaimConflict as exc:  # somebody else won the race: theirs, not a failure
                ctx.log("claim lost", reason=exc.message)
                return CheckDepsOutput(proceed=False, reason=f"claimed by someone else: {exc.message}")
        else:
            holder = f", assignee {issue.assignee}" if issue.assignee else ""
            ctx.log("not ours", status=issue.status, assignee=issue.assignee)
            return CheckDepsOutput(proceed=False, reason=f"issue is {issue.status}{holder}; not ours to work on")
    if issue.open_blockers:
        names = ", ".join(f"{b.id} ({b.status or 'unknown'})" for b in issue.open_blockers)
        tracker.release(inp.issue_id)
        ctx.log("blocked, released", blockers=names)
        return CheckDepsOutput(proceed=False, reason=f"blocked by {names}; released")
    if not issue.is_work:
        tracker.release(inp.issue_id)
        return CheckDepsOutput(proceed=False, reason=f"a {issue.issue_type} is not implemented by an agent")
    return CheckDepsOutput(proceed=True, issue=issue)


class SessionMemory:
    """The issue's agent session, on disk beside the worktree: written as soon as the session has
    an id, so an attempt after a crash, a stall or a failure continues that session (with its whole
    context) instead of starting from nothing. Engine-neutral: a file, not engine state."""

    def __init__(self, svc: Services, issue_id: str):
        self.path = svc.state_dir / "sessions" / f"{require_safe_issue_id(issue_id)}.json"

    def load(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def save(self, **fields) -> None:
        data = {**self.load(), **fields, "updated": time.time()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, self.path)

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


def continue_message(reason: str, changed: list[str]) -> str:
    files = ", ".join(changed[:30]) + (" …" if len(changed) > 30 else "") if changed else "none yet"
    return (
        f"Your previous attempt at this issue did not finish: {reason}.\n"
        f"The worktree still holds the changes made so far (files changed: {files}).\n"
        "Continue the task from where it stopped; do not start over. Finish with a short summary of "
        "the whole change."
    )


@_as_step_failure
def process(inp: TaskInput, ctx: StepContext) -> ProcessOutput:
    """One agent session in the issue's own worktree. Its edits stay there whatever happens, and a
    later attempt continues the same session from them."""
    deps: CheckDepsOutput = ctx.parent("check-deps")
    if not deps.proceed or deps.issue is None:
        return ProcessOutput(no_work=True)
    svc = _services(inp)
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
            ctx.log("model provider failed, opencode retries", attempt=event.get("attempt"),
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


@_as_step_failure
def verify(inp: TaskInput, ctx: StepContext) -> VerifyOutput:
    """Run every quality gate in the worktree. The agent's own claims count for nothing."""
    proc: ProcessOutput = ctx.parent("process")
    if proc.no_work:
        return VerifyOutput(no_work=True, superseded=proc.superseded)
    svc = _services(inp)
    # (No tracker read here: commit reads the issue right before landing, one call per run less.)
    deps: CheckDepsOutput = ctx.parent("check-deps")
    with svc.workspace.worktree_lock(inp.issue_id):
        return _verify(svc, inp, proc, deps, ctx)


def _verify(svc: Services, inp: TaskInput, proc: ProcessOutput, deps: CheckDepsOutput,
            ctx: StepContext) -> VerifyOutput:
    worktree = svc.workspace.ensure_worktree(inp.issue_id)
    if proc.gate_report is not None and proc.gated_tree == svc.workspace.tree_id(inp.issue_id):
        # The runner itself ran these gates on exactly this tree moments ago, in the fix loop.
        report = proc.gate_report
        ctx.log("gates already passed on this exact tree", gates=report.trailer(), tree=proc.gated_tree)
    else:
        report = gate_suite(svc, deps.issue, worktree, cancel=ctx.cancel, run_id=ctx.run_id)
        ctx.log("gates run", passed=report.passed, gates=report.trailer())
    refuse_moved_yardstick(report)
    if not report.passed:
        raise StepFailed(f"quality gates failed: {report.summary()}", retryable=False, detail=report.render_text())
    return VerifyOutput(report=report)


@_as_step_failure
def commit(inp: TaskInput, ctx: StepContext) -> CommitOutput:
    """Commit with trailers, land on the target, close the issue, remove the worktree."""
    deps: CheckDepsOutput = ctx.parent("check-deps")
    proc: ProcessOutput = ctx.parent("process")
    ver: VerifyOutput = ctx.parent("verify")
    if proc.no_work or ver.no_work or deps.issue is None:
        superseded = ver.superseded or proc.superseded
        return CommitOutput(no_work=True, reason=f"superseded: {superseded}" if superseded else deps.reason,
                            superseded=superseded)
    svc = _services(inp)
    ws, tracker, issue = svc.workspace, svc.tracker, deps.issue
    gates = ver.report.trailer()
    agent = svc.agent
    trailers = {
        "Beads-Issue": issue.id,
        "Beads-Run": ctx.run_id,
        "Agent": f"{agent.name} {agent.model}".strip(),
        "Gates": gates,
    }
    if tests := ver.report.tests_trailer():
        trailers["Tests"] = tests
    message = trailer_message(issue.title or "(no title)", issue.id, proc.summary, trailers)
    if ws.landed_commit(issue.id) is None:
        # Right before landing, the tracker once more: a person's word wins over the gates' verdict.
        if why := check_issue(tracker, issue.id):
            ctx.log("run superseded: nothing lands, the issue is left as the person set it", reason=why)
            return CommitOutput(no_work=True, reason=f"superseded: {why}", superseded=why)
        ws.commit(issue.id, message, paths=proc.changed_files)
        failpoint("after-commit")

    def regate(path) -> tuple[bool, str]:
        report = gate_suite(svc, issue, path, cancel=ctx.cancel, run_id=ctx.run_id)
        ctx.log("re-gated after rebase", passed=report.passed, gates=report.trailer())
        if moved_yardstick(report):
            return False, handover_reason(report)
        return report.passed, report.summary()

    landed = ws.land(issue.id, regate=regate)
    ctx.log("landed", sha=landed.sha, target=landed.target, rebased=landed.rebased, already=landed.already)
    failpoint("after-land")
    reason = f"Landed {landed.sha[:8]} on {landed.target} (gates: {gates})"
    # Close only now that the target contains the commit. Closing is idempotent (Tracker.close): an
    # issue already closed, by an earlier try or by a person, keeps its reason.
    tracker.close(issue.id, reason)
    failpoint("after-close")
    ws.remove_worktree(issue.id)
    SessionMemory(svc, issue.id).forget()
    RetryNote(svc.state_dir, issue.id).forget()
    return CommitOutput(sha=landed.sha, target=landed.target, close_reason=reason, rebased=landed.rebased,
                        already_landed=landed.already)


def on_failure(inp: TaskInput, run_id: str, step: str, error: StepFailed, attempts: int) -> None:
    """After the last attempt: keep the branch, say why on the issue, and hand it to a person."""
    svc = _services(inp)
    try:
        branch = svc.workspace.branch(inp.issue_id)
        where = svc.workspace.worktree_path(inp.issue_id)
    except UnsafeIdError:
        return  # never touch an issue whose id cannot be used safely
    if why := check_issue(svc.tracker, inp.issue_id):
        # A person took the issue meanwhile: their word stands; no comment, no needs-human.
        from beads_runner.reconcile import log as reconcile_log

        reconcile_log.info("failed run superseded: the issue is left as the person set it", run_id=run_id,
                           issue_id=inp.issue_id, step=step, reason=why)
        return
    detail = error.detail.strip()
    if len(detail) > 3000:
        detail = "…" + detail[-3000:]
    text = (
        f"beads-runner run {run_id} failed at step {step} after {attempts} attempt(s): {error.reason}\n\n"
        f"The branch {branch} and its worktree {where} are kept with the work so far.\n"
        f"Set the issue back to open (and remove the needs-human label) to let the runner try again."
    )
    if detail:
        text += f"\n\nLast output:\n```\n{detail}\n```"
    svc.tracker.comment(inp.issue_id, text)
    svc.tracker.hand_to_human(inp.issue_id)


def process_budget(config) -> float:
    """The process step's timeout covers its whole fix loop: up to `agent.max_attempts` sessions, each
    followed by the gates, plus a minute of slack."""
    return config.agent.max_attempts * (config.agent.timeout + config.gates_budget) + 60


TASK_FLOW = WorkflowSpec(
    name=WORKFLOW_NAME,
    input=TaskInput,
    steps=(
        StepSpec("check-deps", check_deps, CheckDepsOutput),
        StepSpec("process", process, ProcessOutput, parents=("check-deps",),
                 timeout=lambda config: process_budget(config), concurrency_key=SESSION_KEY),
        StepSpec("verify", verify, VerifyOutput, parents=("process",),
                 timeout=lambda config: config.gates_budget + 60),
        StepSpec("commit", commit, CommitOutput, parents=("verify",),
                 timeout=lambda config: config.engine.step_timeout),
    ),
    on_failure=on_failure,
    key=lambda inp: inp.issue_id,
)
