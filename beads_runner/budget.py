"""The daily budget (agent.daily_budget_usd) as the engine and the daemon ask about it: is there room
for another session today?"""

from __future__ import annotations

import time
from pathlib import Path

import structlog

from beads_runner import costs
from beads_runner.parking import Parking

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
