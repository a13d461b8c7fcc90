"""The embedded engine of a repository, with its configuration's policies, and the daily-budget guard
the engine and the daemon ask before a session starts."""

from __future__ import annotations

import time
from pathlib import Path

import structlog

from beads_runner import costs, procreg
from beads_runner.config import STATE_DB
from beads_runner.parking import Admission, Parking
from beads_runner.services import Services
from workflows.local import LocalEngine
from workflows.spec import RetryPolicy
from workflows.task_flow import SESSION_KEY, TASK_FLOW

log = structlog.get_logger("beads_runner.daemon")


class BudgetGuard:
    """Whether today's spend leaves room for another session (agent.daily_budget_usd), asked often by
    the engine and the daemon, so the answer is cached for a few seconds."""

    def __init__(self, budget: float | None, state_dir: Path, ttl: float = 5.0, on_exceeded=None):
        self.budget = budget
        self.state_dir = state_dir
        self.ttl = ttl
        self.on_exceeded = on_exceeded  # called once a UTC day, when the budget is first found spent
        self._checked = -1e9
        self._exceeded = False
        self._said_on: str | None = None
        self._parking: Parking | None = None

    def exceeded(self) -> bool:
        now = time.monotonic()
        if now - self._checked >= self.ttl:
            # `beads-runner resume --raise-budget USD` sets today's budget over the configured one.
            if self._parking is None:
                self._parking = Parking(self.state_dir)
            budget = self._parking.budget_for_today(self.budget)
            if budget is None:
                self._checked, self._exceeded = now, False
                return False
            spent, budget, self._exceeded = costs.budget_status(budget, self.state_dir)
            self._checked = now
            day = costs.utc_day(time.time())
            if self._exceeded and self._said_on != day:
                self._said_on = day
                log.warning(costs.BUDGET_EXCEEDED_MESSAGE, spent_usd=round(spent, 4), budget_usd=budget)
                if self.on_exceeded is not None:
                    self.on_exceeded(spent, budget)
        return self._exceeded

    def admit(self, _key: str) -> bool:
        return not self.exceeded()

    def invalidate(self) -> None:
        """A step finished (maybe a session that spent money): look again at the next question."""
        self._checked = -1e9


def build_engine(services: Services, *, poll: float = 0.05, budget: BudgetGuard | None = None,
                 admission: Admission | None = None) -> LocalEngine:
    """The embedded engine for a repository, with the policies of its configuration."""
    cfg = services.config
    budget = budget or BudgetGuard(cfg.agent.daily_budget_usd, services.state_dir)
    # No new session while the provider is parked or the daily budget is spent.
    admission = admission or Admission(cfg, services.state_dir, budget_guard=budget)
    procreg.configure(services.state_dir / "procs")
    r = cfg.engine.retry
    timeouts = {s.name: s.timeout(cfg) for s in TASK_FLOW.steps if s.timeout is not None}
    engine = LocalEngine(
        services.state_dir / STATE_DB, TASK_FLOW,
        max_sessions=cfg.engine.max_sessions,
        workers=cfg.engine.max_runs + cfg.engine.max_sessions,
        retry=RetryPolicy(r.attempts, r.backoff, r.backoff_factor, r.backoff_max),
        step_timeouts=timeouts,
        default_timeout=cfg.engine.step_timeout,
        poll=poll,
        before_resume=procreg.reap_orphans,
        admit=admission.admit,
        handler_attempts=cfg.engine.handover_attempts,
        handler_backoff=cfg.engine.handover_backoff,
    )
    # The parks' tables, created now (the engine has checked the database), outside any engine transaction.
    admission.parking.active()
    if admission.sessions_in_use is None:
        # After a quota park, one session probes the provider before the others start.
        admission.sessions_in_use = lambda: engine.sessions_in_use(SESSION_KEY)
    return engine
