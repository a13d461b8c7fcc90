"""Parked: no new agent session starts, for a reason outside any one issue, until it passes.

Three reasons park the runner's sessions (never a run's attempts):

- a provider's quota is spent: until the reset it named, else a backoff that doubles up to
  `agent.park_max` (each park of the same provider without a session getting through in between
  doubles it);
- a provider refused the credentials: until `beads-runner resume`;
- the daily budget is spent: until 00:00 UTC, or `beads-runner resume --raise-budget USD`.

Parks live in the engine's SQLite file (table `parks`), so every runner sharing the repository, and
`status` and `explain`, see the same ones. The engine asks `Admission.admit` before any session
starts; a run whose session hit the limit goes back to pending without spending an attempt.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from beads_runner import costs
from beads_runner.config import STATE_DB, Config
from beads_runner.limits import AUTH, QUOTA
from workflows.local.store import Store

BUDGET = "budget"
BUDGET_SCOPE = "budget"

@dataclass
class Park:
    scope: str
    kind: str  # quota | auth | budget
    reason: str
    since: float
    until: float | None  # None: until `beads-runner resume`
    issue_id: str | None = None
    run_id: str | None = None
    strikes: int = 1

    def in_effect(self, now: float) -> bool:
        return self.until is None or self.until > now

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["until_resume"] = self.until is None
        d["change"] = self.what_would_change_it()
        return d

    def what_would_change_it(self) -> str:
        if self.kind == BUDGET:
            return "the UTC day turns, or `beads-runner resume --raise-budget USD`"
        if self.until is None:
            return "fix the provider's credentials (`opencode auth login`), then `beads-runner resume`"
        return (f"it resumes by itself at {time.strftime('%H:%M:%S UTC', time.gmtime(self.until))}; "
                "`beads-runner resume` tries now")


def provider_scope(config: Config) -> str:
    """The provider sessions of this configuration use: `provider:<name>` from agent.model."""
    model = config.agent.model
    if model and "/" in model:
        return f"provider:{model.split('/', 1)[0]}"
    return f"provider:{config.agent.kind}"


class Parking:
    """The parks of one repository (its engine database)."""

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.db_path = self.state_dir / STATE_DB
        self._store: Store | None = None

    def _conn(self) -> sqlite3.Connection:
        # The engine's state owner opens the file and keeps its schema (the parks tables are one of
        # its migrations). Where the engine runs here it has opened the file first, so this never
        # writes the schema inside the engine's own write transaction (admission).
        if self._store is None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._store = Store(self.db_path)
        return self._store.connection()

    @staticmethod
    def _park(row: sqlite3.Row) -> Park:
        return Park(scope=row["scope"], kind=row["kind"], reason=row["reason"], since=row["since"],
                    until=row["until"], issue_id=row["issue_id"], run_id=row["run_id"], strikes=row["strikes"])

    def park(self, scope: str, kind: str, reason: str, *, reset_at: float | None, backoff: float,
             backoff_max: float, issue_id: str | None = None, run_id: str | None = None,
             now: float | None = None) -> tuple[Park, bool]:
        """Park `scope`. A quota parks until `reset_at`, else for `backoff` doubled per strike (at most
        `backoff_max`); auth until resume. Returns (the park, whether it is new: not already in effect)."""
        now = time.time() if now is None else now
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT * FROM parks WHERE scope=?", (scope,)).fetchone()
            current = self._park(row) if row is not None and row["active"] else None
            new = current is None or not current.in_effect(now)
            if not new:
                # Another session hit the limit the park is already about: the same park, not a new
                # strike (sessions in flight together must not escalate the backoff), never shorter.
                strikes = current.strikes
                until = current.until
                if kind == AUTH:
                    until = None
                elif until is not None and reset_at is not None and reset_at > until:
                    until = reset_at
            else:
                strikes = (row["strikes"] + 1) if row is not None and row["strikes"] else 1
                if kind == AUTH:
                    until = None
                elif reset_at is not None and reset_at > now:
                    until = reset_at
                else:
                    until = now + min(backoff_max, backoff * 2 ** (strikes - 1))
            db.execute(
                "INSERT INTO parks(scope, kind, reason, since, until, issue_id, run_id, strikes, active, ended_at) "
                "VALUES (?,?,?,?,?,?,?,?,1,NULL) ON CONFLICT(scope) DO UPDATE SET kind=excluded.kind, "
                "reason=excluded.reason, since=CASE WHEN ? THEN excluded.since ELSE parks.since END, "
                "until=excluded.until, issue_id=excluded.issue_id, run_id=excluded.run_id, "
                "strikes=excluded.strikes, active=1, ended_at=NULL",
                (scope, kind, reason[:500], now, until, issue_id, run_id, strikes, new))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return self.get(scope), new

    def get(self, scope: str) -> Park | None:
        row = self._conn().execute("SELECT * FROM parks WHERE scope=? AND active=1", (scope,)).fetchone()
        return self._park(row) if row else None

    def active(self, now: float | None = None) -> list[Park]:
        """Parks in effect now."""
        now = time.time() if now is None else now
        rows = self._conn().execute("SELECT * FROM parks WHERE active=1 ORDER BY since").fetchall()
        return [p for p in map(self._park, rows) if p.in_effect(now)]

    def blocking(self, scope: str, now: float | None = None) -> Park | None:
        park = self.get(scope)
        return park if park is not None and park.in_effect(time.time() if now is None else now) else None

    def ended(self, now: float | None = None) -> list[Park]:
        """Parks whose time has passed, marked over: each is returned once (to announce "resumed")."""
        now = time.time() if now is None else now
        db = self._conn()
        if not db.execute("SELECT 1 FROM parks WHERE active=1 AND until IS NOT NULL AND until<=? LIMIT 1",
                          (now,)).fetchone():
            return []  # a read first: asked every second by the daemon
        rows = db.execute("UPDATE parks SET active=0, ended_at=? WHERE active=1 AND until IS NOT NULL AND until<=? "
                          "RETURNING *", (now, now)).fetchall()
        return [self._park(r) for r in rows]

    def resume(self, scope: str | None = None, now: float | None = None) -> list[Park]:
        """End parks now (all, or one scope): sessions may start at once. Returns those ended."""
        now = time.time() if now is None else now
        sql, args = "UPDATE parks SET active=0, ended_at=?, strikes=0 WHERE active=1", [now]
        if scope is not None:
            sql += " AND scope=?"
            args.append(scope)
        rows = self._conn().execute(sql + " RETURNING *", args).fetchall()
        return [self._park(r) for r in rows]

    def probing(self, scope: str, now: float | None = None) -> bool:
        """A quota park of `scope` ended and no session has got through since: the next is a probe."""
        row = self._conn().execute("SELECT strikes, until, active, kind FROM parks WHERE scope=?", (scope,)).fetchone()
        if row is None or not row["strikes"] or row["kind"] != QUOTA:
            return False
        return not row["active"] or (row["until"] is not None and row["until"] <= (time.time() if now is None else now))

    def got_through(self, scope: str, now: float | None = None) -> None:
        """A session of `scope` talked to its provider without hitting a limit: the backoff starts over."""
        db = self._conn()
        if db.execute("SELECT 1 FROM parks WHERE scope=? AND strikes>0", (scope,)).fetchone():
            db.execute("UPDATE parks SET strikes=0 WHERE scope=? AND (active=0 OR until<=?)",
                       (scope, time.time() if now is None else now))

    # -- the daily budget ------------------------------------------------------------------------
    def raise_budget(self, usd: float, now: float | None = None) -> str:
        day = costs.utc_day(time.time() if now is None else now)
        self._conn().execute("INSERT INTO budget_raises(day, usd, at) VALUES (?,?,?) ON CONFLICT(day) DO UPDATE "
                             "SET usd=excluded.usd, at=excluded.at", (day, float(usd), time.time()))
        return day

    def budget_for_today(self, configured: float | None, now: float | None = None) -> float | None:
        """The configured daily budget, or today's raise (`resume --raise-budget`) if there is one."""
        day = costs.utc_day(time.time() if now is None else now)
        row = self._conn().execute("SELECT usd FROM budget_raises WHERE day=?", (day,)).fetchone()
        return float(row["usd"]) if row else configured


def budget_park(config: Config, state_dir: Path, now: float | None = None,
                parking: Parking | None = None) -> Park | None:
    """The budget park in effect now (derived from today's spending), or None."""
    now = time.time() if now is None else now
    parking = parking or Parking(state_dir)
    budget = parking.budget_for_today(config.agent.daily_budget_usd, now)
    if budget is None:
        return None
    spent, budget, exceeded = costs.budget_status(budget, state_dir, now=now)
    if not exceeded:
        return None
    return Park(scope=BUDGET_SCOPE, kind=BUDGET,
                reason=f"daily budget spent: ${spent:.2f} of ${budget:.2f} (UTC {costs.utc_day(now)})",
                since=costs.day_start(now), until=costs.day_start(now) + 86400)


def parks_in_effect(config: Config, state_dir: Path, now: float | None = None) -> list[Park]:
    """Every park in effect now: the providers' and the budget's."""
    if not (Path(state_dir) / STATE_DB).exists():
        return []  # never ran here: nothing parked, and a read must not create the database
    parking = Parking(state_dir)
    found = parking.active(now)
    budget = budget_park(config, state_dir, now, parking)
    return found + ([budget] if budget else [])


class Admission:
    """Whether a new session may start now: no park on the provider, the budget not spent. The
    engine asks in its claim transaction, often, so the answer is cached for `ttl` seconds.

    When a quota park ends, one session goes first (the probe): the others wait until a session has
    got through to the provider (`Parking.got_through`), so a provider still out of quota is asked
    once per park, not once per waiting run. `sessions_in_use` (the engine's count of running
    sessions) is asked fresh each time while probing; without it every session is let through."""

    def __init__(self, config: Config, state_dir: Path, budget_guard: Any | None = None, ttl: float = 0.5,
                 sessions_in_use: Callable[[], int] | None = None):
        self.config = config
        self.parking = Parking(state_dir)
        self.scope = provider_scope(config)
        self.budget_guard = budget_guard
        self.ttl = ttl
        self.sessions_in_use = sessions_in_use
        self._checked = -1e9
        self._answer = True
        self._probing = False
        self._lock = threading.Lock()

    def admit(self, _key: str) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self.ttl:
                try:
                    parked = self.parking.blocking(self.scope) is not None
                    self._probing = not parked and self.parking.probing(self.scope)
                except sqlite3.Error:
                    parked = False  # a busy database must not stop the runner; the next look decides
                spent = self.budget_guard.exceeded() if self.budget_guard is not None else False
                self._answer = not parked and not spent
                self._checked = now
            if self._answer and self._probing and self.sessions_in_use is not None:
                return self.sessions_in_use() == 0
            return self._answer

    def invalidate(self) -> None:
        with self._lock:
            self._checked = -1e9

    def parked(self) -> bool:
        return not self.admit("")


__all__ = ["AUTH", "BUDGET", "QUOTA", "Admission", "Park", "Parking", "budget_park", "parks_in_effect",
           "provider_scope"]
