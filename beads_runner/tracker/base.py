"""What the runner needs from an issue tracker, whatever stores the issues.

The tracker owns task state. The runner reads issues through `Tracker`, claims them, and writes
back only comments, status, labels and the close: nothing else.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Issue types that are infrastructure, not work (beads' own list): never implemented by an agent.
INFRASTRUCTURE_TYPES = frozenset({"merge-request", "gate", "molecule", "message", "agent", "role", "rig"})
# Types the runner does not implement: epics are containers of work, not work.
NON_WORK_TYPES = INFRASTRUCTURE_TYPES | {"epic"}
# Dependency types that block readiness (beads' rules). `related`, `discovered-from`, ... never block.
BLOCKING_DEP_TYPES = frozenset({"blocks", "conditional-blocks"})
NEEDS_HUMAN_LABEL = "needs-human"


class Blocker(BaseModel):
    """One issue this issue depends on, as far as blocking goes."""

    model_config = ConfigDict(extra="ignore")

    id: str
    type: str = "blocks"
    status: str | None = None  # known when the tracker resolved it (bd show), else None

    @property
    def blocks(self) -> bool:
        return self.type in BLOCKING_DEP_TYPES


class Issue(BaseModel):
    """An issue as bd emits it. Unknown fields are ignored; nulls become empty values."""

    model_config = ConfigDict(extra="ignore")

    id: str
    title: str = ""
    description: str = ""
    design: str = ""
    acceptance_criteria: str = ""
    notes: str = ""
    status: str = "open"
    priority: int = 2
    issue_type: str = "task"
    assignee: str = ""
    labels: list[str] = Field(default_factory=list)
    parent: str | None = None
    close_reason: str = ""
    created_at: str | None = None
    updated_at: str | None = None
    created_by: str = ""  # the actor who created it (trusted work, explain)
    started_at: str | None = None  # when it was claimed (explain: "since when")
    defer_until: str | None = None  # deferred: not ready before this time
    # The issue's dependencies, normalised from either shape bd prints (raw records in
    # ready/list/export, resolved issue objects with `dependency_type` in show).
    blockers: list[Blocker] = Field(default_factory=list)

    @field_validator(
        "title", "description", "design", "acceptance_criteria", "notes", "assignee", "close_reason",
        "status", "issue_type", "created_by", mode="before",
    )
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_int(cls, value: Any) -> Any:
        return 2 if value is None or value == "" else value

    @property
    def open_blockers(self) -> list[Blocker]:
        """Blocking dependencies whose target is not known to be closed."""
        return [b for b in self.blockers if b.blocks and b.status != "closed"]

    @property
    def is_work(self) -> bool:
        return self.issue_type not in NON_WORK_TYPES


@runtime_checkable
class Tracker(Protocol):
    """The operations the runner performs on a tracker. Every call acts on one issue id.

    Errors are `beads_runner.errors.TrackerError` subclasses: `TrackerBusy` (retry),
    `IssueNotFound`, `ClaimConflict`, `TrackerUnavailable`.
    """

    actor: str

    def version(self) -> str:
        """The tracker's version (bd's own), for doctor and feature checks."""

    def ready(self, limit: int = 0) -> list[Issue]:
        """Ready work issues, tracker order (priority first). Epics and infrastructure excluded."""

    def show(self, issue_id: str) -> Issue:
        """The issue now, with its blockers' current statuses resolved."""

    def claim(self, issue_id: str) -> Issue:
        """Atomically claim an open issue for `actor` and read it back.

        Returns the issue (status in_progress, assignee actor). Raises ClaimConflict if someone
        else holds it, also when the read-back shows another winner."""

    def claim_next(self) -> Issue | None:
        """Atomically claim the first ready work issue (`bd ready --claim`) and read it back; None
        when nothing is claimable."""

    def claimed(self) -> list[Issue]:
        """Issues in progress under `actor`: after a crash, the runner takes back those it has no
        run for."""

    def release(self, issue_id: str) -> None:
        """Give a claimed issue back to the queue: status open, no assignee."""

    def close(self, issue_id: str, reason: str) -> Issue:
        """Close with a reason. Closing an already closed issue is not an error and changes nothing
        (idempotent): the first close's reason stays."""

    def comment(self, issue_id: str, text: str) -> None:
        """Add a comment as `actor`."""

    def comments(self, issue_id: str) -> list[dict[str, Any]]:
        """The issue's comments, oldest first: dicts with id, author, text, created_at."""

    def hand_to_human(self, issue_id: str) -> None:
        """Status blocked plus the `needs-human` label, so `ready` stops offering it."""

    def give_back(self, issue_id: str) -> None:
        """Undo `hand_to_human`: status open, no assignee, the `needs-human` label removed."""
