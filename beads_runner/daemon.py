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
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from beads_runner import procreg
from beads_runner.errors import ClaimConflict, RunnerError, TrackerBusy, TrackerError, UnsafeIdError
from beads_runner.explain import trust_problem
from beads_runner.ids import is_safe_issue_id, require_safe_issue_id
from beads_runner.notify import EngineEventFeed, Notifier
from beads_runner.parking import Admission
from beads_runner.services import Services
from workflows.engine import ACTIVE, CANCELLED, FAILED, PENDING, QUEUED, RUNNING, Engine, EngineUnavailable, open_engine
from workflows.spec import StepFailed
from workflows.task_flow import TASK_FLOW, TaskInput

from beads_runner.engine_setup import BudgetGuard, build_engine  # noqa: F401 - importable from here too
from beads_runner.watcher import ChangeWatcher

log = structlog.get_logger("beads_runner.daemon")



@dataclass
class PollResult:
    submitted: list[str] = field(default_factory=list)
    ready: int = 0
    refused: list[str] = field(default_factory=list)
    tracker_error: str | None = None  # the tracker could not say what is ready: nothing is known


class Runner:
    """poll → claim → submit, on top of an engine that runs and resumes the workflow."""

    ONCE_TRACKER_TRIES = 3  # --once: polls in a row the tracker fails before giving up

    def __init__(self, services: Services, engine: Engine | None = None):
        self.services = services
        self.notifier = Notifier(services.config.notify, repo=str(services.repo))
        self.budget = BudgetGuard(services.config.agent.daily_budget_usd, services.state_dir,
                                  on_exceeded=self._budget_reached)
        self.admission = Admission(services.config, services.state_dir, budget_guard=self.budget)
        self.parking = self.admission.parking
        self.engine: Engine = engine or open_engine(services, budget=self.budget, admission=self.admission)
        self.tracker = services.tracker
        self.cfg = services.config
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.submitted: list[str] = []
        self.tracker_failed: str | None = None  # --once gave up: the tracker failed on every try
        # (free sessions, unfinished runs) when the tracker last had nothing for us; None after a claim.
        self._drained_at: tuple[int, int] | None = None
        self._foreign_change = False
        self.engine.add_listener(self._wake.set)
        self.engine.add_listener(self.budget.invalidate)
        self.engine.add_listener(self.admission.invalidate)
        self.feed = EngineEventFeed(self.engine, self.notifier)
        self._parks_checked = 0.0

    def _budget_reached(self, spent: float, budget: float) -> None:
        self.notifier.emit("budget_reached", reason=f"spent ${spent:.2f} of ${budget:.2f} today (UTC); no new "
                           "sessions until the day turns or `beads-runner resume --raise-budget USD`")

    def _watch_parks(self) -> None:
        """Once a second: parks whose time has passed end (announced once), and notifications go out."""
        now = time.monotonic()
        if now - self._parks_checked < 1.0:
            return
        self._parks_checked = now
        try:
            for park in self.parking.ended():
                log.info("provider available again: sessions resume", scope=park.scope, kind=park.kind)
                self.notifier.emit("resumed", reason=f"{park.scope}: the park ({park.kind}) is over",
                                   scope=park.scope)
                self.admission.invalidate()
            self.feed.pump()
        except Exception as exc:  # noqa: BLE001 - telling people must never stop the runner
            log.warning("could not read parks or events", error=str(exc))

    # --- one pass --------------------------------------------------------------------------
    def free_sessions(self) -> int:
        """Sessions not taken by runs that have yet to finish their `process` step, plus the
        `engine.prefetch` issues claimed ahead so a session never waits for the tracker."""
        waiting = 0
        for run in self.engine.runs(statuses=(QUEUED, RUNNING)):
            proc = next((s for s in run.steps if s.name == "process"), None)
            if proc is not None and proc.status in (PENDING, RUNNING):
                waiting += 1
        return self.cfg.engine.max_sessions + self.cfg.engine.prefetch - waiting

    def poll_once(self) -> PollResult:
        """Claim ready issues (atomically, `bd ready --claim`) while sessions are free; submit each.
        An engine that does not answer is asked again at the next poll."""
        try:
            self.engine.housekeeping()
            return self._poll_once()
        except EngineUnavailable as exc:
            log.warning("engine unavailable, will poll again", error=exc.message)
            return PollResult()

    def _poll_once(self) -> PollResult:
        result = PollResult()
        self.admission.invalidate()  # a fresh look: the cache is for the engine's frequent questions
        if self.budget.exceeded() or self.admission.parked():
            # Running sessions finish; nothing new is claimed until the UTC day turns or the park ends.
            return result
        free = self.free_sessions()
        conflicts = 0
        while free > 0 and not self._stop.is_set():
            try:
                issue = self._claim_next()
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
                self._drained_at = self._capacity()
                break
            self._drained_at = None
            result.ready += 1
            if not is_safe_issue_id(issue.id):
                self._refuse(issue.id)
                result.refused.append(issue.id)
                continue
            if self.engine.active_run(issue.id):
                continue  # its run holds the claim already
            run_id, created = self._submit(issue.id)
            if created:
                result.submitted.append(run_id)
                log.info("claimed and submitted", issue_id=issue.id, run_id=run_id, title=issue.title[:80])
            free -= 1
        return result

    def _submit(self, issue_id: str) -> tuple[str, bool]:
        """A run for the claimed issue (or its active one: created False). If the engine refuses,
        the claim is released, so the issue is not left in progress with no run."""
        try:
            run_id, created = self.engine.submit(TaskInput(issue_id=issue_id, repo=str(self.services.repo)))
        except RunnerError:
            self._release_unsubmitted(issue_id)
            raise
        if created:
            self.submitted.append(run_id)
        return run_id, created

    def _claim_next(self):
        """The next ready issue, claimed. With trust settings (tracker.require_labels,
        tracker.trusted_creators) only issues they allow are claimed: chosen first, then claimed one by
        one, instead of bd's claim-the-first."""
        tcfg = self.cfg.tracker
        if not tcfg.require_labels and not tcfg.trusted_creators:
            return self.tracker.claim_next()
        actor = self.tracker.actor
        for candidate in self.tracker.ready():
            if candidate.assignee and candidate.assignee != actor:
                continue
            if trust_problem(candidate, tcfg, actor) is not None:
                continue
            if not is_safe_issue_id(candidate.id):
                return candidate  # refused (with a comment) by the caller
            if self.engine.active_run(candidate.id):
                continue
            try:
                return self.tracker.claim(candidate.id)
            except ClaimConflict:
                continue
        return None

    def _release_unsubmitted(self, issue_id: str) -> None:
        """The engine refused the run of an issue we just claimed: give the claim back, or it would
        stay in progress with nobody working on it."""
        try:
            self.tracker.release(issue_id)
            log.warning("could not start a run; released the claim", issue_id=issue_id)
        except TrackerError as err:
            log.error("could not start a run nor release the claim; the next start takes it back",
                      issue_id=issue_id, error=err.message)

    def _capacity(self) -> tuple[int, int]:
        return self.free_sessions(), len(self.engine.runs(statuses=ACTIVE))

    def _worth_asking(self) -> bool:
        """Whether a wake from the engine can change the tracker's last answer. After "nothing
        claimable", a step that freed no session and ended no run (check-deps, verify) cannot: asking
        bd again would only cost a call (about 0.3 s with the real bd). An engine that does not
        answer cannot say: poll (which waits for it)."""
        if self._drained_at is None:
            return True
        try:
            return self._drained_at != self._capacity()
        except EngineUnavailable:
            return True

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
            last = self.engine.runs(key=issue.id, limit=1)
            if last and last[0].status == FAILED and last[0].handler_error:
                # Handed to a person, recorded only here because the tracker refused it: not ours to take.
                # Tell the tracker now, if it listens again.
                self._deliver_local_handover(last[0])
                continue
            run_id, created = self._submit(issue.id)
            if created:
                log.info("took back a stale claim", issue_id=issue.id, run_id=run_id)
                submitted.append(run_id)
        return submitted

    def _deliver_local_handover(self, run) -> None:
        step = next((s for s in run.steps if s.name == run.failed_step), None)
        try:
            TASK_FLOW.on_failure(TaskInput.model_validate(run.input), run.id, run.failed_step or "?",
                                 StepFailed(run.error or "failed", retryable=False), step.attempt if step else 0)
        except Exception as exc:  # noqa: BLE001 - still refused: it stays recorded here
            log.warning("handover recorded locally only: the issue stays with a person", issue_id=run.key,
                        run_id=run.id, tracker_error=str(exc))
            return
        self.engine.clear_handler_error(run.id)
        log.info("handover recorded locally is now in the tracker", issue_id=run.key, run_id=run.id)

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
        try:
            self.submitted.extend(r.id for r in self.engine.runs(statuses=ACTIVE, limit=1000))
        except EngineUnavailable as exc:
            log.warning("could not list the runs in flight", error=exc.message)
        procreg.reap_orphans()  # agents and gates a killed runner left behind go before anything resumes
        self.take_back_stale_claims()
        self.engine.start()
        self.notifier.start()
        log.info("runner started", repo=str(self.services.repo), max_sessions=self.cfg.engine.max_sessions,
                 resumed=len(self.submitted), pid=os.getpid())
        self.notifier.emit("runner_started", reason=f"{self.services.repo}: up to "
                           f"{self.cfg.engine.max_sessions} sessions", resumed=len(self.submitted))
        failed_polls = 0
        try:
            next_poll = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_poll or self._wake.is_set():
                    self._wake.clear()
                    if now >= next_poll or self._foreign_change or self._worth_asking():
                        self._foreign_change = False
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
                self._watch_parks()
                if watcher is not None and watcher.changed(ours=self._own_store_change):
                    self._foreign_change = True
                    self._wake.set()
        finally:
            log.info("runner stopping", grace=self.cfg.engine.grace_period)
            self.engine.stop(grace=self.cfg.engine.grace_period if self._stop.is_set() else 0.0)
            self._parks_checked = 0.0
            self._watch_parks()
            self.notifier.emit("runner_stopped", reason="stopped by a signal" if self._stop.is_set()
                               else "nothing left to do (--once)")
            self.notifier.close()
        return self.exit_code()

    def _own_store_change(self, mtime_ns: int) -> bool:
        own = getattr(self.tracker, "changed_store_at", None)
        return bool(own is not None and own(mtime_ns))

    def _idle(self) -> bool:
        """Nothing ready that we could take, and nothing that can still move: done (for --once).
        Runs waiting on a spent budget cannot move until tomorrow; they resume at the next start."""
        try:
            if not self._nothing_moves():
                return False
            # Before `--once` ends: the engine's upkeep now, not at its next turn (Hatchet: the issues
            # of runs cancelled meanwhile must not stay claimed).
            self.engine.housekeeping(force=True)
        except EngineUnavailable as exc:
            log.warning("engine unavailable; not idle until it answers", error=exc.message)
            return False
        return True

    def _nothing_moves(self) -> bool:
        parks = self.parking.active()
        if not self.engine.has_active_runs():
            if any(p.until is not None for p in parks):
                # Nothing was claimed while the provider is parked; ready work waits for the park's end.
                try:
                    return not self.tracker.ready(limit=1)
                except TrackerError:
                    return False
            return True
        # A quota park ends by itself: wait for it. Refused credentials and a spent budget do not.
        waits_for_a_person = any(p.until is None for p in parks)
        if not (self.budget.exceeded() or waits_for_a_person):
            return False
        # Only runs whose next step is a session are stuck; any other step still moves on.
        for run in self.engine.runs(statuses=ACTIVE):
            step = run.current_step
            if step is None or step.status == RUNNING or TASK_FLOW.step(step.name).concurrency_key is None:
                return False
        return True

    def exit_code(self) -> int:
        """0: every run seen landed or was skipped; 1: a run failed, or (--once) the tracker never
        answered what is ready."""
        if self.tracker_failed is not None:
            return 1
        try:
            for run_id in dict.fromkeys(self.submitted):
                view = self.engine.settled_run(run_id)
                if view is None:  # an unknown end is no success
                    log.error("cannot read how a run ended", run_id=run_id)
                    return 1
                if view.status in (FAILED, CANCELLED):
                    return 1
        except EngineUnavailable:
            return 1
        return 0


def start(services: Services, *, once: bool = False, poll_interval: float | None = None,
          preflight: Callable[[Services, bool], None] | None = None,
          on_runner: Callable[[Runner], None] | None = None) -> int:
    """`beads-runner start`, on the configured engine: the same path for both.

    Where the steps run in this process, they are confined first (no sandbox that can work, no
    start); the engine then checks it can run them (`Engine.prepare`), `preflight(services,
    steps_run_here)` checks the tracker, target, gates and agent, and the runner works until
    stopped (`on_runner` installs the signal handlers). Returns the exit status."""
    runner = Runner(services)
    if runner.engine.steps_run_here:
        services.enter_sandbox()
    runner.engine.prepare()
    if preflight is not None:
        preflight(services, runner.engine.steps_run_here)
    if on_runner is not None:
        on_runner(runner)
    return runner.run(once=once, poll_interval=poll_interval)
