"""beads' JSONL export as data: its lines (kept byte for byte unless changed), its ids and times,
and readiness computed the way bd computes it (the contract's "What ready means"): status exactly
`open`, not pinned, not deferred into the future, not ephemeral, not an infrastructure type, not
an epic, not blocked (an open `blocks`/`conditional-blocks` target, a blocked parent, a
`waits-for` target with open children). Sorted by priority, then newest first. `JsonlTracker`
(jsonl.py) reads and writes the file with these."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


from beads_runner.errors import IssueNotFound
from beads_runner.tracker.base import BLOCKING_DEP_TYPES, INFRASTRUCTURE_TYPES


def now_rfc3339() -> str:
    """The current time as bd writes it: RFC3339, UTC `Z`, second precision."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", "0", "false")


def _priority(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 2


def uuid7() -> str:
    """A UUIDv7 string (bd 1.x comment ids)."""
    ms = int(time.time() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (ms << 80) | (0x7 << 76) | (((rand >> 64) & 0xFFF) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def base36(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"


@dataclass
class Line:
    text: str  # the line as read (without the newline); written back unless `obj` changed
    obj: dict[str, Any] | None = None  # the issue, when the line is one
    changed: bool = False


class Store:
    """The parsed file: every line in order, issues indexed by id."""

    def __init__(self, path: Path, lines: list[Line]):
        self.path = path
        self.lines = lines
        self.index: dict[str, dict[str, Any]] = {}
        self.line_of: dict[str, int] = {}
        for number, line in enumerate(lines):
            if line.obj is not None and line.obj["id"] not in self.index:
                self.index[line.obj["id"]] = line.obj
                self.line_of[line.obj["id"]] = number

    @property
    def issues(self) -> list[dict[str, Any]]:
        return list(self.index.values())

    def get(self, issue_id: str) -> dict[str, Any]:
        issue = self.index.get(issue_id)
        if issue is None:
            raise IssueNotFound(f"no issue {issue_id!r} in {self.path}",
                                fix="check the id (the file lists every issue, one per line)")
        return issue

    def touch(self, issue: dict[str, Any]) -> None:
        issue["updated_at"] = now_rfc3339()
        self.lines[self.line_of[issue["id"]]].changed = True

    def append(self, issue: dict[str, Any]) -> None:
        self.lines.append(Line(text="", obj=issue, changed=True))
        self.index[issue["id"]] = issue
        self.line_of[issue["id"]] = len(self.lines) - 1

    @property
    def dirty(self) -> bool:
        return any(line.changed for line in self.lines)


# -- readiness ------------------------------------------------------------------------------------


def own_deps(issue: dict[str, Any]) -> list[dict[str, Any]]:
    deps = issue.get("dependencies")
    if not isinstance(deps, list):
        return []
    return [
        d for d in deps
        if isinstance(d, dict) and d.get("depends_on_id") not in (None, "")
        and str(d.get("issue_id") or issue["id"]) == issue["id"]
    ]


def _parent(issue: dict[str, Any]) -> str | None:
    if issue.get("parent"):
        return str(issue["parent"])
    for dep in own_deps(issue):
        if dep.get("type") == "parent-child":
            return str(dep["depends_on_id"])
    return None


def open_blockers(index: dict[str, dict[str, Any]], issue: dict[str, Any]) -> list[str]:
    """Ids of existing `blocks`/`conditional-blocks` targets that are not closed."""
    found = []
    for dep in own_deps(issue):
        if (dep.get("type") or "blocks") in BLOCKING_DEP_TYPES:
            target = index.get(str(dep["depends_on_id"]))
            if target is not None and target.get("status") != "closed":
                found.append(target["id"])
    return found


def _blocked(index: dict[str, dict[str, Any]], issue: dict[str, Any], children: dict[str, list[str]],
             seen: set[str] | None = None) -> bool:
    seen = set() if seen is None else seen
    if issue["id"] in seen:
        return False
    seen.add(issue["id"])
    if open_blockers(index, issue):
        return True
    for dep in own_deps(issue):
        if dep.get("type") == "waits-for":
            kids = children.get(str(dep["depends_on_id"]), [])
            if any(index[k].get("status") != "closed" for k in kids):
                return True
    parent = index.get(_parent(issue) or "")
    return parent is not None and _blocked(index, parent, children, seen)


def children_of(index: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {}
    for issue in index.values():
        parent = _parent(issue)
        if parent and parent != issue["id"]:
            children.setdefault(parent, []).append(issue["id"])
    return children


def ready_ids(issues: Iterable[dict[str, Any]], *, at: datetime | None = None) -> list[str]:
    """The ready work issues among raw issue dicts, in bd's default order (priority, newest)."""
    issues = list(issues)
    index: dict[str, dict[str, Any]] = {}
    for issue in issues:
        index.setdefault(issue["id"], issue)
    children = children_of(index)
    moment = at or datetime.now(UTC)
    position = {issue_id: n for n, issue_id in enumerate(index)}
    ready = []
    for issue in index.values():
        if issue.get("status", "open") != "open" or _truthy(issue.get("pinned")) or _truthy(issue.get("ephemeral")):
            continue
        issue_type = issue.get("issue_type") or "task"
        if issue_type in INFRASTRUCTURE_TYPES or issue_type == "epic":
            continue
        defer = _parse_time(issue.get("defer_until"))
        if defer is not None and defer > moment:
            continue
        if _blocked(index, issue, children):
            continue
        ready.append(issue)

    def order(issue: dict[str, Any]) -> tuple[int, float, int]:
        created = _parse_time(issue.get("created_at"))
        return (_priority(issue.get("priority")), -(created.timestamp() if created else 0.0),
                -position[issue["id"]])

    return [issue["id"] for issue in sorted(ready, key=order)]


# -- the tracker ----------------------------------------------------------------------------------
