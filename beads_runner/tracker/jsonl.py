"""`JsonlTracker`: the `Tracker` protocol directly on a beads JSONL export file.

For repositories without bd, and for the offline demo. The file is bd's export format: one issue
object per line, with labels, raw dependency records and comments embedded, and (bd >= 1.0.3) a
leading `"_type":"issue"`. Lines this tracker does not change are written back byte for byte;
changed issues keep their unknown fields and key order. Every read-modify-write holds a
`filelock.FileLock` beside the file, and writes are atomic (temp file + os.replace).

Readiness follows the contract's "What ready means" (bd computes it; here it is computed the
same way): status exactly `open`, not pinned, not deferred into the future, not ephemeral, not an
infrastructure type, not an epic, not blocked (an open `blocks`/`conditional-blocks` target, a
blocked parent, a `waits-for` target with open children). Sorted by priority, then newest first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from beads_runner.errors import ClaimConflict, IssueNotFound, TrackerBusy, TrackerError, TrackerUnavailable
from beads_runner.tracker import parse
from beads_runner.tracker.base import BLOCKING_DEP_TYPES, INFRASTRUCTURE_TYPES, NEEDS_HUMAN_LABEL, Issue

LOCK_TIMEOUT = 30.0


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


def _uuid7() -> str:
    """A UUIDv7 string (bd 1.x comment ids)."""
    ms = int(time.time() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (ms << 80) | (0x7 << 76) | (((rand >> 64) & 0xFFF) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _base36(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"


@dataclass
class _Line:
    text: str  # the line as read (without the newline); written back unless `obj` changed
    obj: dict[str, Any] | None = None  # the issue, when the line is one
    changed: bool = False


class _Store:
    """The parsed file: every line in order, issues indexed by id."""

    def __init__(self, path: Path, lines: list[_Line]):
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
        self.lines.append(_Line(text="", obj=issue, changed=True))
        self.index[issue["id"]] = issue
        self.line_of[issue["id"]] = len(self.lines) - 1

    @property
    def dirty(self) -> bool:
        return any(line.changed for line in self.lines)


# -- readiness ------------------------------------------------------------------------------------


def _own_deps(issue: dict[str, Any]) -> list[dict[str, Any]]:
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
    for dep in _own_deps(issue):
        if dep.get("type") == "parent-child":
            return str(dep["depends_on_id"])
    return None


def _open_blockers(index: dict[str, dict[str, Any]], issue: dict[str, Any]) -> list[str]:
    """Ids of existing `blocks`/`conditional-blocks` targets that are not closed."""
    found = []
    for dep in _own_deps(issue):
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
    if _open_blockers(index, issue):
        return True
    for dep in _own_deps(issue):
        if dep.get("type") == "waits-for":
            kids = children.get(str(dep["depends_on_id"]), [])
            if any(index[k].get("status") != "closed" for k in kids):
                return True
    parent = index.get(_parent(issue) or "")
    return parent is not None and _blocked(index, parent, children, seen)


def _children(index: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
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
    children = _children(index)
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


class JsonlTracker:
    """The beads tracker on a JSONL export file. One issue id per call, always."""

    def __init__(self, repo: Path, path: str | os.PathLike[str] = ".beads/issues.jsonl",
                 actor: str = "beads-runner", *, prefix: str | None = None):
        self.repo = Path(repo)
        path = Path(path)
        self.path = path if path.is_absolute() else self.repo / path
        self.actor = actor
        self.prefix = prefix
        # thread_local (filelock's default): threads sharing this tracker exclude each other too.
        self._lock = FileLock(str(self.path) + ".lock")

    # -- storage ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.path.parent.is_dir():
            raise self._missing()
        try:
            with self._lock.acquire(timeout=LOCK_TIMEOUT):
                yield
        except Timeout:
            raise TrackerBusy(f"{self.path} stayed locked for {LOCK_TIMEOUT:g}s ({self._lock.lock_file})",
                              fix="check for a stuck beads-runner process") from None

    def _missing(self) -> TrackerUnavailable:
        return TrackerUnavailable(
            f"the issues file {self.path} does not exist",
            fix="export one with `bd export -o .beads/issues.jsonl`, run `beads-runner demo`, or set "
            "tracker.path in .beads-runner.toml (or use tracker.kind = \"bd\")",
        )

    def _read(self) -> _Store:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise self._missing() from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TrackerUnavailable(f"cannot read {self.path}: {exc}", fix=f"make {self.path} a readable UTF-8 file") \
                from None
        lines: list[_Line] = []
        for number, text in enumerate(raw.splitlines(), 1):
            if not text.strip():
                lines.append(_Line(text=text))
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise TrackerError(f"{self.path}:{number} is not a JSON object ({exc})",
                                   fix=f"repair or remove line {number} of {self.path}") from None
            is_issue = (isinstance(obj, dict) and obj.get("id") not in (None, "")
                        and obj.get("_type", "issue") == "issue")
            if is_issue:
                obj["id"] = str(obj["id"])
            lines.append(_Line(text=text, obj=obj if is_issue else None))
        return _Store(self.path, lines)

    def _write(self, store: _Store) -> None:
        out = []
        for line in store.lines:
            if line.obj is not None and line.changed:
                out.append(json.dumps(line.obj, ensure_ascii=False, separators=(",", ":")))
            else:
                out.append(line.text)
        data = "\n".join(out) + ("\n" if out else "")
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(OSError):
                os.chmod(tmp, self.path.stat().st_mode & 0o777 if self.path.exists() else 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def _modify(self) -> Iterator[_Store]:
        with self._locked():
            store = self._read()
            yield store
            if store.dirty:
                self._write(store)

    def _snapshot(self) -> _Store:
        with self._locked():
            return self._read()

    # -- conversions --------------------------------------------------------------------------

    def _issue(self, store: _Store, raw: dict[str, Any]) -> Issue:
        """An Issue with blockers resolved against the store, as `bd show` would print it."""
        resolved = []
        for dep in _own_deps(raw):
            target = store.index.get(str(dep["depends_on_id"]))
            if target is None:
                continue  # bd show only lists dependencies it can resolve
            resolved.append({"id": target["id"], "status": target.get("status"),
                             "dependency_type": dep.get("type") or "blocks"})
        return parse.issue_from_dict({**raw, "dependencies": resolved}, f"{self.path}")

    # -- Tracker ------------------------------------------------------------------------------

    def version(self) -> str:
        return "jsonl"

    def init(self) -> None:
        """Create an empty issues file (and its directory) if there is none."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not self.path.exists():
                self._write(_Store(self.path, []))

    def ready(self, limit: int = 0) -> list[Issue]:
        store = self._snapshot()
        ids = ready_ids(store.issues)
        if limit and limit > 0:
            ids = ids[:limit]
        return [self._issue(store, store.index[i]) for i in ids]

    def show(self, issue_id: str) -> Issue:
        store = self._snapshot()
        return self._issue(store, store.get(issue_id))

    def claim(self, issue_id: str) -> Issue:
        with self._modify() as store:
            issue = store.get(issue_id)
            holder = issue.get("assignee") or ""
            status = issue.get("status") or "open"
            ours = holder == self.actor
            if holder and not ours:
                raise ClaimConflict(f"cannot claim {issue_id}: issue already claimed by {holder}",
                                    fix="leave it to its holder")
            if not (status == "open" or (status == "in_progress" and ours)):
                raise ClaimConflict(f"cannot claim {issue_id}: its status is {status!r}, not open",
                                    fix="only open issues can be claimed")
            if not (status == "in_progress" and ours):
                issue["started_at"] = now_rfc3339()
            issue["status"] = "in_progress"
            issue["assignee"] = self.actor
            store.touch(issue)
            return self._issue(store, issue)

    def claim_next(self) -> Issue | None:
        """Claim the first ready issue (one lock for the choice and the claim)."""
        with self._modify() as store:
            for issue_id in ready_ids(store.issues):
                issue = store.index[issue_id]
                if issue.get("assignee") and issue.get("assignee") != self.actor:
                    continue
                issue["status"] = "in_progress"
                issue["assignee"] = self.actor
                issue["started_at"] = now_rfc3339()
                store.touch(issue)
                return self._issue(store, issue)
        return None

    def claimed(self) -> list[Issue]:
        """Issues in progress under this actor (to take back claims a dead runner left)."""
        store = self._snapshot()
        return [self._issue(store, raw) for raw in store.issues
                if raw.get("status") == "in_progress" and (raw.get("assignee") or "") == self.actor]

    def release(self, issue_id: str) -> None:
        with self._modify() as store:
            issue = store.get(issue_id)
            issue["status"] = "open"
            issue.pop("assignee", None)
            store.touch(issue)

    def close(self, issue_id: str, reason: str) -> Issue:
        with self._modify() as store:
            issue = store.get(issue_id)
            if issue.get("status") == "closed":
                return self._issue(store, issue)
            blockers = _open_blockers(store.index, issue)
            if issue.get("issue_type") == "epic":
                blockers += [c for c in _children(store.index).get(issue_id, [])
                             if store.index[c].get("status") != "closed"]
            if blockers:
                raise parse.CloseBlocked(
                    f"cannot close {issue_id}: blocked by open issues [{' '.join(blockers)}]",
                    fix="close the blocking issues first",
                )
            issue["status"] = "closed"
            issue["closed_at"] = now_rfc3339()
            issue["close_reason"] = reason
            store.touch(issue)
            return self._issue(store, issue)

    def comment(self, issue_id: str, text: str) -> None:
        with self._modify() as store:
            issue = store.get(issue_id)
            comments = issue.get("comments")
            if not isinstance(comments, list):
                comments = []
            comments.append({"id": _uuid7(), "issue_id": issue_id, "author": self.actor, "text": text,
                             "created_at": now_rfc3339()})
            issue["comments"] = comments
            if "comment_count" in issue:
                issue["comment_count"] = len(comments)
            store.touch(issue)

    def comments(self, issue_id: str) -> list[dict[str, Any]]:
        issue = self._snapshot().get(issue_id)
        raw = issue.get("comments") if isinstance(issue.get("comments"), list) else []
        items = parse.comments_from_data(raw, str(self.path))
        return sorted(items, key=lambda c: c["created_at"])  # stable: same-second comments keep file order

    def hand_to_human(self, issue_id: str) -> None:
        with self._modify() as store:
            issue = store.get(issue_id)
            issue["status"] = "blocked"
            labels = issue.get("labels") if isinstance(issue.get("labels"), list) else []
            issue["labels"] = sorted(set(labels) | {NEEDS_HUMAN_LABEL})
            store.touch(issue)

    def give_back(self, issue_id: str) -> None:
        with self._modify() as store:
            issue = store.get(issue_id)
            issue["status"] = "open"
            issue.pop("assignee", None)
            labels = issue.get("labels") if isinstance(issue.get("labels"), list) else []
            remaining = sorted(set(labels) - {NEEDS_HUMAN_LABEL})
            if remaining:
                issue["labels"] = remaining
            else:
                issue.pop("labels", None)
            store.touch(issue)

    # -- helpers for the demo and tests -------------------------------------------------------

    def _prefix(self, store: _Store) -> str:
        if self.prefix:
            return self.prefix
        config = self.path.parent / "config.yaml"
        with contextlib.suppress(OSError):
            if m := re.search(r"^issue-prefix:\s*[\"']?([A-Za-z0-9_-]+)", config.read_text("utf-8"), re.M):
                return m.group(1)
        counts = Counter(issue_id.split("-", 1)[0] for issue_id in store.index if "-" in issue_id)
        if counts:
            return counts.most_common(1)[0][0]
        name = re.sub(r"[^A-Za-z0-9]+", "-", self.repo.resolve().name).strip("-").lower()
        return name or "bd"

    def _new_id(self, store: _Store, title: str) -> str:
        prefix = self._prefix(store)
        digest = _base36(hashlib.sha256(f"{title}|{time.time_ns()}|{secrets.token_hex(8)}".encode()).digest())
        for length in range(4, 20):
            candidate = f"{prefix}-{digest[:length]}"
            if candidate not in store.index:
                return candidate
        raise TrackerError("could not generate a unique issue id")

    def _dep(self, issue_id: str, target: str, dep_type: str) -> dict[str, Any]:
        return {"issue_id": issue_id, "depends_on_id": target, "type": dep_type, "created_at": now_rfc3339(),
                "created_by": self.actor, "metadata": "{}"}

    def create(self, title: str, description: str = "", deps: Iterable[str] = (), priority: int = 2,
               issue_type: str = "task", id: str | None = None) -> Issue:  # noqa: A002 (bd's own name)
        """Add an open issue. `deps` are ids it depends on (`blocks`), or `type:id` like bd's --deps."""
        with self._modify() as store:
            issue_id = id or self._new_id(store, title)
            if issue_id in store.index:
                raise TrackerError(f"issue {issue_id} already exists in {self.path}")
            stamp = now_rfc3339()
            issue: dict[str, Any] = {}
            if any(line.obj is not None and "_type" in line.obj for line in store.lines) or not store.index:
                issue["_type"] = "issue"
            issue.update({"id": issue_id, "title": title})
            if description:
                issue["description"] = description
            issue.update({"status": "open", "priority": int(priority), "issue_type": issue_type,
                          "created_at": stamp, "created_by": self.actor, "updated_at": stamp})
            records = []
            for item in deps:
                dep_type, _, target = item.rpartition(":") if ":" in item else ("blocks", "", item)
                if target not in store.index:
                    raise IssueNotFound(f"cannot depend on {target!r}: no such issue in {self.path}")
                records.append(self._dep(issue_id, target, dep_type or "blocks"))
            if records:
                issue["dependencies"] = records
            store.append(issue)
            return self._issue(store, issue)

    def add_dependency(self, issue_id: str, depends_on_id: str, type: str = "blocks") -> None:  # noqa: A002
        """`bd dep add issue_id depends_on_id --type type`: issue_id depends on depends_on_id."""
        with self._modify() as store:
            issue = store.get(issue_id)
            store.get(depends_on_id)
            for dep in _own_deps(issue):
                if str(dep["depends_on_id"]) == depends_on_id:
                    if (dep.get("type") or "blocks") != type:
                        raise TrackerError(f"dependency {issue_id} -> {depends_on_id} already exists with type "
                                           f"{dep.get('type')} (requested {type})")
                    return
            deps = issue.get("dependencies") if isinstance(issue.get("dependencies"), list) else []
            deps.append(self._dep(issue_id, depends_on_id, type))
            issue["dependencies"] = deps
            if "dependency_count" in issue:
                issue["dependency_count"] = len(_own_deps(issue))
            store.touch(issue)
