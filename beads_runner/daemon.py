"""The daemon: poll the tracker, claim ready issues, submit runs, and keep every session busy.

One place decides what runs. The tracker says what is ready; the engine's database says what is
already running (for this runner and any other sharing the repository); this loop claims only as
many issues as there are free sessions (plus `engine.prefetch`, one by default, so the next issue is
claimed and checked before a session frees up), so claimed issues never pile up behind the cap.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from beads_runner import costs, procreg
from beads_runner.config import STATE_DB
from beads_runner.errors import ClaimConflict, RunnerError, TrackerBusy, TrackerError, UnsafeIdError
from beads_runner.ids import is_safe_issue_id, require_safe_issue_id
from beads_runner.services import Services
from workflows.local import LocalEngine
from workflows.spec import RetryPolicy
from workflows.task_flow import TASK_FLOW, TaskInput

log = structlog.get_logger("beads_runner.daemon")



class BudgetGuard:
    """Whether today's spend leaves room for another session (agent.daily_budget_usd), asked often by
    the engine and the daemon, so the answer is cached for a few seconds."""

    def __init__(self, budget: float | None, state_dir: Path, ttl: float = 5.0):
        self.budget = budget
        self.state_dir = state_dir
        self.ttl = ttl
        self._checked = -1e9
        self._exceeded = False
        self._said_on: str | None = None

    def exceeded(self) -> bool:
        if self.budget is None:
            return False
        now = time.monotonic()
        if now - self._checked >= self.ttl:
            spent, budget, self._exceeded = costs.budget_status(self.budget, self.state_dir)
            self._checked = now
            day = costs.utc_day(time.time())
            if self._exceeded and self._said_on != day:
                self._said_on = day
                log.warning(costs.BUDGET_EXCEEDED_MESSAGE, spent_usd=round(spent, 4), budget_usd=budget)
        return self._exceeded

    def admit(self, _key: str) -> bool:
        return not self.exceeded()

    def invalidate(self) -> None:
        """A step finished (maybe a session that spent money): look again at the next question."""
        self._checked = -1e9


def build_engine(services: Services, *, poll: float = 0.05, budget: BudgetGuard | None = None) -> LocalEngine:
    """The embedded engine for a repository, with the policies of its configuration."""
    cfg = services.config
    budget = budget or BudgetGuard(cfg.agent.daily_budget_usd, services.state_dir)
    procreg.configure(services.state_dir / "procs")
    r = cfg.engine.retry
    timeouts = {s.name: s.timeout(cfg) for s in TASK_FLOW.steps if s.timeout is not None}
    return LocalEngine(
        services.state_dir / STATE_DB, TASK_FLOW,
        max_sessions=cfg.engine.max_sessions,
        workers=cfg.engine.max_runs + cfg.engine.max_sessions,
        retry=RetryPolicy(r.attempts, r.backoff, r.backoff_factor, r.backoff_max),
        step_timeouts=timeouts,
        default_timeout=cfg.engine.step_timeout,
        poll=poll,
        before_resume=procreg.reap_orphans,
        admit=budget.admit if cfg.agent.daily_budget_usd is not None else None,
    )


class ChangeWatcher:
    """Notices changes under `.beads/` by stat alone: cheap enough to ask several times a second,
    so a newly ready issue is picked up in well under a second instead of at the next poll."""

    def __init__(self, root: Path, depth: int = 2, max_entries: int = 2000):
        self.root = root
        self.depth = depth
        self.max_entries = max_entries
        self._last = self.signature()

    def signature(self) -> tuple[int, int]:
        newest, count = 0, 0
        stack = [(self.root, 0)]
        while stack and count < self.max_entries:
            path, level = stack.pop()
            try:
                with os.scandir(path) as entries:
                    for entry in entries:
                        count += 1
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        newest = max(newest, st.st_mtime_ns)
                        if entry.is_dir(follow_symlinks=False) and level < self.depth:
                            stack.append((Path(entry.path), level + 1))
            except OSError:
                continue
        return newest, count

    def changed(self) -> bool:
        now = self.signature()
        if now != self._last:
            self._last = now
            return True
        return False


@dataclass
class PollResult:
    submitted: list[str] = field(default_factory=list)
    ready: int = 0
    refused: list[str] = field(default_factory=list)
    tracker_error: str | None = None  # the tracker could not say what is ready: nothing is known


class Runner:
    """poll → claim → submit, on top of an engine that runs and resumes the workflow."""

    ONCE_TRACKER_TRIES = 3  # --once: polls in a row the tracker fails before giving up

    def __init__(self, services: Services, engine: LocalEngine | None = None):
        self.services = services
        self.budget = BudgetGuard(services.config.agent.daily_budget_usd, services.state_dir)
        self.engine = engine or build_engine(services, budget=self.budget)
        self.tracker = services.tracker
        self.cfg = services.config
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.submitted: list[str] = []
        self.tracker_failed: str | None = None  # --once gave up: the tracker failed on every try
        self.engine.add_listener(self._wake.set)
        self.engine.add_listener(self.budget.invalidate)

    # --- one pass --------------------------------------------------------------------------
    def free_sessions(self) -> int:
        """Sessions not taken by runs that have yet to finish their `process` step, plus the
        `engine.prefetch` issues claimed ahead so a session never waits for the tracker."""
        waiting = 0
        for run in self.engine.runs(statuses=("queued", "running")):
            proc = next((s for s in run.steps if s.name == "process"), None)
            if proc is not None and proc.status in ("pending", "running"):
                waiting += 1
        return self.cfg.engine.max_sessions + self.cfg.engine.prefetch - waiting

    def poll_once(self) -> PollResult:
        """Claim ready issues (atomically, `bd ready --claim`) while sessions are free; submit each."""
        result = PollResult()
        if self.budget.exceeded():
            return result  # running sessions finish; nothing new is claimed until the UTC day turns
        free = self.free_sessions()
        conflicts = 0
        while free > 0 and not self._stop.is_set():
            try:
                issue = self.tracker.claim_next()
            except ClaimConflict as exc:
                # Another claimer won the read-back; bd may offer the same issue again at once,
                # so give up for this pass after a few in a row.
                log.info("claim lost, trying the next issue", reason=exc.message)
                conflicts += 1
                if conflicts >= 5:
                    break
                continue
            except TrackerBusy as exc:
                log.warning("tracker busy, will poll again", error=exc.message)
                result.tracker_error = exc.message
                break
            except TrackerError as exc:
                # A daemon does not die of one bad tracker answer: say it, and ask again next poll.
                log.error("tracker call failed, will poll again", error=exc.message, fix=exc.fix)
                result.tracker_error = exc.message
                break
            if issue is None:
                break
            result.ready += 1
            if not is_safe_issue_id(issue.id):
                self._refuse(issue.id)
                result.refused.append(issue.id)
                continue
            if self.engine.active_run(issue.id):
                continue  # its run holds the claim already
            try:
                run_id, created = self.engine.submit(TaskInput(issue_id=issue.id, repo=str(self.services.repo)))
            except RunnerError:
                self._release_unsubmitted(issue.id)
                raise
            if created:
                self.submitted.append(run_id)
                result.submitted.append(run_id)
                log.info("claimed and submitted", issue_id=issue.id, run_id=run_id, title=issue.title[:80])
            free -= 1
        return result

    def _release_unsubmitted(self, issue_id: str) -> None:
        """The engine refused the run of an issue we just claimed: give the claim back, or it would
        stay in progress with nobody working on it."""
        try:
            self.tracker.release(issue_id)
            log.warning("could not start a run; released the claim", issue_id=issue_id)
        except TrackerError as err:
            log.error("could not start a run nor release the claim; the next start takes it back",
                      issue_id=issue_id, error=err.message)

    def _refuse(self, issue_id: str) -> None:
        """An id that cannot name a branch or a path is never used for one: the issue goes to a person
        (bd takes the id as one argv element, never through a shell, so talking about it is safe)."""
        try:
            require_safe_issue_id(issue_id)
        except UnsafeIdError as exc:
            log.error("issue refused", problem=exc.message, fix=exc.fix)
            try:
                self.tracker.comment(issue_id, f"beads-runner refused this issue: {exc.message}. Fix: {exc.fix}.")
                self.tracker.hand_to_human(issue_id)
            except TrackerError as err:
                log.warning("could not hand the refused issue to a person", error=err.message)

    def take_back_stale_claims(self) -> list[str]:
        """Issues in progress under our actor with no active run: a runner died between claiming and
        submitting (or its state was lost). The engine's state says nobody works on them: resume."""
        submitted = []
        try:
            claimed = self.tracker.claimed()
        except TrackerError as exc:
            log.warning("could not list claimed issues", error=exc.message)
            return submitted
        for issue in claimed:
            if not is_safe_issue_id(issue.id) or self.engine.active_run(issue.id):
                continue
            try:
                run_id, created = self.engine.submit(TaskInput(issue_id=issue.id, repo=str(self.services.repo)))
            except RunnerError:
                self._release_unsubmitted(issue.id)
                raise
            if created:
                log.info("took back a stale claim", issue_id=issue.id, run_id=run_id)
                self.submitted.append(run_id)
                submitted.append(run_id)
        return submitted

    # --- the loop --------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self, *, once: bool = False, poll_interval: float | None = None, watch_interval: float = 0.2) -> int:
        """Work until stopped (or, with `once`, until nothing is ready or running).

        Returns 0 if every run this invocation saw ended landed or skipped, 1 if any failed."""
        interval = poll_interval if poll_interval is not None else self.cfg.tracker.poll_interval
        beads_dir = self.services.repo / ".beads"
        watcher = ChangeWatcher(beads_dir) if beads_dir.is_dir() else None
        # Runs left unfinished by an earlier runner are this runner's too.
        self.submitted.extend(r.id for r in self.engine.runs(statuses=("queued", "running", "failing")))
        procreg.reap_orphans()  # agents and gates a killed runner left behind go before anything resumes
        self.take_back_stale_claims()
        self.engine.start()
        log.info("runner started", repo=str(self.services.repo), max_sessions=self.cfg.engine.max_sessions,
                 resumed=len(self.submitted))
        failed_polls = 0
        try:
            next_poll = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_poll or self._wake.is_set():
                    self._wake.clear()
                    result = self.poll_once()
                    next_poll = now + interval
                    failed_polls = failed_polls + 1 if result.tracker_error else 0
                    if once and not result.submitted and self._idle():
                        if not result.tracker_error:
                            break
                        # "Nothing ready" is not known when the tracker fails: ask again a few times,
                        # then give up with a non-zero exit instead of claiming all is done.
                        if failed_polls >= self.ONCE_TRACKER_TRIES:
                            self.tracker_failed = result.tracker_error
                            log.error("--once: the tracker failed on every try; giving up",
                                      error=result.tracker_error, tries=failed_polls)
                            break
                self._wake.wait(watch_interval)
                if watcher is not None and watcher.changed():
                    self._wake.set()
        finally:
            log.info("runner stopping", grace=self.cfg.engine.grace_period)
            self.engine.stop(grace=self.cfg.engine.grace_period if self._stop.is_set() else 0.0)
        return self.exit_code()

    def _idle(self) -> bool:
        """Nothing ready that we could take, and nothing that can still move: done (for --once).
        Runs waiting on a spent budget cannot move until tomorrow; they resume at the next start."""
        if not self.engine.has_active_runs():
            return True
        if not self.budget.exceeded():
            return False
        # Only runs whose next step is a session are stuck; any other step still moves on.
        for run in self.engine.runs(statuses=("queued", "running", "failing")):
            step = run.current_step
            if step is None or step.status == "running" or TASK_FLOW.step(step.name).concurrency_key is None:
                return False
        return True

    def exit_code(self) -> int:
        """0: every run seen landed or was skipped; 1: a run failed, or (--once) the tracker never
        answered what is ready."""
        if self.tracker_failed is not None:
            return 1
        runs = [self.engine.get_run(r) for r in dict.fromkeys(self.submitted)]
        return 1 if any(r is not None and r.status == "failed" for r in runs) else 0
