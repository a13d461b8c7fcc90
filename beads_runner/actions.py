"""What a person can do to a run: retry, cancel, resume. Plain functions over `Services`, so the
command line and a web console call the same code paths.

Each raises `RunnerError` (with its fix) for a request that cannot be carried out, and returns a
plain dict saying what it did.
"""

from __future__ import annotations

import getpass
import os
import time
from pathlib import Path
from typing import Any

from beads_runner.errors import GitError, IssueNotFound, RunnerError
from beads_runner.ids import require_safe_issue_id
from beads_runner.jsonfile import JsonFile
from beads_runner.parking import Parking
from beads_runner.services import Services
from beads_runner.tracker.base import NEEDS_HUMAN_LABEL
from workflows.engine import ACTIVE, CANCELLED, FAILED, QUEUED, RUNNING, Engine, RunView, open_engine



def person() -> str:
    """Who is asking: $BEADS_RUNNER_PERSON, else the login name."""
    try:
        return os.environ.get("BEADS_RUNNER_PERSON") or getpass.getuser()
    except (KeyError, OSError):
        return "someone"


class RetryNote(JsonFile):
    """Why an issue is being tried again, for its next session's prompt. A file beside the session
    memory; removed when the issue lands."""

    def __init__(self, state_dir: Path, issue_id: str):
        super().__init__(Path(state_dir) / "retries" / f"{require_safe_issue_id(issue_id)}.json")

    def save(self, **fields: Any) -> None:
        self.write(fields)


def retry_message(note: dict[str, Any]) -> str:
    """What the first session of a retried run is told, after the issue itself."""
    if not note:
        return ""
    why = f"at step {note.get('step')}: {note.get('reason')}" if note.get("step") else str(note.get("reason"))
    text = (f"\n\nThis is a retry, asked for by {note.get('by') or 'a person'}. The last run failed {why}.\n")
    if note.get("fresh"):
        text += "It starts afresh from the target branch; the earlier work is kept aside, not in this worktree.\n"
    else:
        text += ("The worktree holds that run's work: review it, fix what made it fail, and finish the issue.\n")
    return text


def _engine(svc: Services) -> Engine:
    return open_engine(svc)


def _latest_run(engine: Engine, issue_id: str) -> RunView | None:
    runs = engine.runs(key=issue_id, limit=1)
    return runs[0] if runs else None


def _show(svc: Services, issue_id: str):
    try:
        return svc.tracker.show(issue_id)
    except IssueNotFound as exc:
        raise RunnerError(f"no issue {issue_id!r}: {exc.message}", fix="check the id (`bd list`)") from None


def _keep_aside(svc: Services, issue_id: str) -> str | None:
    """For a fresh retry: commit whatever the worktree holds on its branch, rename the branch out of
    the way (nothing is lost) and remove the worktree. Returns the kept branch's name, or None."""
    ws = svc.workspace
    branch = ws.branch(issue_id)
    path = ws.worktree_path(issue_id)
    if path.exists() and (path / ".git").exists():
        ws.git("add", "-A", cwd=path)
        if ws.git("status", "--porcelain", cwd=path).strip():
            ws.git("commit", "-q", "--no-verify", "-m", f"beads-runner: work kept before a fresh retry of {issue_id}",
                   cwd=path, env=ws._identity_env())
        ws.remove_worktree(issue_id, delete_branch=False)
    if not ws.rev(f"refs/heads/{branch}"):
        return None
    kept = f"{branch}-before-retry-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
    ws.git("branch", "-m", branch, kept)
    return kept


def retry_issue(svc: Services, issue_id: str, *, fresh: bool = False, by: str | None = None) -> dict[str, Any]:
    """Give an issue handed to a person back to the runner: remove `needs-human`, reopen it and
    submit a run. The run continues from the kept branch (its session is told why the last run
    failed), or with `fresh`, from the target (the old branch renamed, kept)."""
    from workflows.task_flow import TaskInput

    require_safe_issue_id(issue_id)
    by = by or person()
    engine = _engine(svc)
    issue = _show(svc, issue_id)
    run = _latest_run(engine, issue_id)
    if run is not None and run.status in ACTIVE:
        raise RunnerError(f"{issue_id} has a run in flight ({run.id}, {run.status})",
                          fix=f"wait for it, or `beads-runner cancel {issue_id}` first")
    if issue.status == "closed":
        raise RunnerError(f"{issue_id} is closed", fix="reopen it in the tracker if it needs more work")
    # A cancelled run counts as handed over: on Hatchet nothing runs a handover for it until a
    # `start` sweeps it (its issue stays claimed by us meanwhile), and retrying it is what was asked.
    handed = NEEDS_HUMAN_LABEL in issue.labels or issue.status == "blocked" or (
        run is not None and run.status in (FAILED, CANCELLED))
    if not handed:
        raise RunnerError(f"{issue_id} was not handed to a person (status {issue.status}, "
                          f"no {NEEDS_HUMAN_LABEL} label)",
                          fix=f"`beads-runner explain {issue_id}` says why it is where it is")
    if issue.status == "in_progress" and issue.assignee not in ("", svc.tracker.actor):
        raise RunnerError(f"{issue_id} is claimed by {issue.assignee}", fix="ask them to release it first")
    kept = None
    if fresh:
        try:
            kept = _keep_aside(svc, issue_id)
        except GitError as exc:
            raise RunnerError(f"could not set the old work aside: {exc.message}", fix=exc.fix) from None
    note = {"by": by, "at": time.time(), "fresh": fresh, "kept_branch": kept,
            "run_id": run.id if run else None, "step": run.failed_step if run else None,
            "reason": (run.error if run else None) or "it was handed to a person"}
    RetryNote(svc.state_dir, issue_id).save(**note)
    svc.tracker.give_back(issue_id)
    start = "afresh from the target" + (f" (the earlier work is kept on {kept})" if kept else "") if fresh \
        else f"from its kept branch {svc.workspace.branch(issue_id)}"
    svc.tracker.comment(issue_id, f"{by} asked beads-runner to retry this issue, {start}. "
                                  f"The last run failed: {note['reason']}")
    new_run, _ = engine.submit(TaskInput(issue_id=issue_id, repo=str(svc.repo)))
    return {"issue_id": issue_id, "run_id": new_run, "fresh": fresh, "kept_branch": kept, "by": by,
            "previous_run": note["run_id"], "previous_reason": note["reason"]}


def cancel_issue(svc: Services, issue_id: str, *, by: str | None = None, wait: float = 30.0) -> dict[str, Any]:
    """Stop an issue's run now: its session's process group is killed by the runner running it, the
    branch is kept, and the issue goes to a person with a comment naming who cancelled it."""
    require_safe_issue_id(issue_id)
    by = by or person()
    engine = _engine(svc)
    run = _latest_run(engine, issue_id)
    if run is None or run.status not in (QUEUED, RUNNING):
        state = "no run" if run is None else f"its last run is {run.status}"
        raise RunnerError(f"{issue_id} has no run in flight ({state})",
                          fix=f"`beads-runner explain {issue_id}` says where it is")
    engine.request_cancel(run.id, by)
    deadline = time.monotonic() + wait
    view = engine.get_run(run.id)
    while view is not None and view.status in ACTIVE and time.monotonic() < deadline:
        time.sleep(0.1)
        view = engine.get_run(run.id)
    return {"issue_id": issue_id, "run_id": run.id, "by": by, "status": view.status if view else None,
            "done": view is not None and view.status not in ACTIVE}


def submit_issue(svc: Services, issue_id: str, *, engine=None) -> dict[str, Any]:
    """Start a run of one issue now (`beads-runner submit`, the console's Submit): the issue must
    exist; its check-deps step claims it. On Hatchet the run goes to the workers."""
    from workflows.task_flow import TaskInput

    require_safe_issue_id(issue_id)
    _show(svc, issue_id)  # a missing issue is an error now, not a failed run later
    if engine is None:
        from workflows.engine import open_engine

        engine = open_engine(svc)
    run_id, created = engine.submit(TaskInput(issue_id=issue_id, repo=str(svc.repo)))
    return {"issue_id": issue_id, "run_id": run_id, "created": created, "engine": svc.config.engine.kind}


def resume(svc: Services, *, raise_budget: float | None = None) -> dict[str, Any]:
    """End every park now (a provider's quota, refused credentials); with `raise_budget`, today's
    daily budget becomes that many dollars."""
    if raise_budget is not None and raise_budget < 0:  # refused before anything changes
        raise RunnerError(f"--raise-budget {raise_budget}: a budget cannot be negative",
                          fix="give the new daily budget in dollars, e.g. --raise-budget 20")
    parking = Parking(svc.state_dir)
    ended = parking.resume()
    raised = None
    if raise_budget is not None:
        raised = {"day": parking.raise_budget(raise_budget), "usd": raise_budget}
    return {"resumed": [p.as_dict() for p in ended], "budget": raised}
