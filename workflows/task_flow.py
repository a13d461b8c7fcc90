"""The task workflow, written once: check-deps → process → verify → commit.

Plain functions over pydantic models. Each engine (embedded or Hatchet) runs these very
functions with the policies in `TASK_FLOW`. Every step is idempotent: re-run after a crash it
finds what was already done and goes on.
"""

from __future__ import annotations

from beads_runner.actions import RetryNote
from beads_runner.failpoints import failpoint
from beads_runner.errors import ClaimConflict, UnsafeIdError
from beads_runner.ids import require_safe_issue_id
from beads_runner.reconcile import check_issue
from beads_runner.services import Services
from beads_runner.workspace import trailer_message
from quality_gates.yardstick import handover_reason, moved_yardstick
from workflows.spec import StepContext, StepFailed, StepSpec, WorkflowSpec
from workflows.process_step import SessionMemory, process
from workflows.steps import (
    SESSION_KEY, WORKFLOW_NAME, CheckDepsOutput, CommitOutput, ProcessOutput, TaskInput, VerifyOutput,
    as_step_failure, did_no_work, gate_suite, refuse_moved_yardstick, step_services,
)

__all__ = [  # what the engines, the CLI and the views import from here
    "SESSION_KEY", "TASK_FLOW", "WORKFLOW_NAME", "CheckDepsOutput", "CommitOutput", "ProcessOutput", "TaskInput",
    "VerifyOutput", "did_no_work", "on_failure",
]


@as_step_failure
def check_deps(inp: TaskInput, ctx: StepContext) -> CheckDepsOutput:
    """Re-read the issue and its blockers and hold the claim; stop (not fail) if it is not ours to do."""
    require_safe_issue_id(inp.issue_id)
    svc = step_services(inp)
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


@as_step_failure
def verify(inp: TaskInput, ctx: StepContext) -> VerifyOutput:
    """Run every quality gate in the worktree. The agent's own claims count for nothing."""
    proc: ProcessOutput = ctx.parent("process")
    if proc.no_work:
        return VerifyOutput(no_work=True, superseded=proc.superseded)
    svc = step_services(inp)
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


@as_step_failure
def commit(inp: TaskInput, ctx: StepContext) -> CommitOutput:
    """Commit with trailers, land on the target, close the issue, remove the worktree."""
    deps: CheckDepsOutput = ctx.parent("check-deps")
    proc: ProcessOutput = ctx.parent("process")
    ver: VerifyOutput = ctx.parent("verify")
    if proc.no_work or ver.no_work or deps.issue is None:
        superseded = ver.superseded or proc.superseded
        return CommitOutput(no_work=True, reason=f"superseded: {superseded}" if superseded else deps.reason,
                            superseded=superseded)
    svc = step_services(inp)
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
    svc = step_services(inp)
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
