"""What the four steps of the task workflow share: their input and outputs, the services of the
repository a step runs on, the gate suite, and the one translation of the runner's errors into a
step's failure (retry, defer or not)."""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field

from beads_runner.agent.base import TokenUsage
from beads_runner.errors import IssueNotFound, RunnerError, TrackerBusy, TrackerError, TrackerUnavailable, UnsafeIdError
from beads_runner.services import Services, services_for
from beads_runner.tracker.base import Issue
from beads_runner.workspace import LandingRefused, WorktreeBusy, cancel_with
from quality_gates import GateInput, SuiteReport, run_suite
from quality_gates.test_integrity import collected_check
from quality_gates.yardstick import allow_by_labels, handover_reason, moved_yardstick
from workflows.spec import StepContext, StepDeferred, StepFailed

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


def step_services(inp: TaskInput) -> Services:
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
    state = step_services(inp).state_dir.resolve()
    path = Path(os.fsdecode(filename) if isinstance(filename, bytes) else str(filename)).resolve()
    return path.is_relative_to(state) and not path.is_relative_to(state / "worktrees")


def as_step_failure(fn: Callable[[TaskInput, StepContext], BaseModel]):
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
