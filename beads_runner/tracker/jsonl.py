"""`JsonlTracker`: the `Tracker` protocol directly on a beads JSONL export file.

For repositories without bd, and for the offline demo. The file is bd's export format: one issue
object per line, with labels, raw dependency records and comments embedded, and (bd >= 1.0.3) a
leading `"_type":"issue"`. Lines this tracker does not change are written back byte for byte;
changed issues keep their unknown fields and key order. Every read-modify-write holds a
`filelock.FileLock` beside the file, and writes are atomic (temp file + os.replace).

Readiness follows the contract's "What ready means", computed as bd does (jsonl_format.py, with
the file's lines, ids and times).
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
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from beads_runner.errors import ClaimConflict, IssueNotFound, TrackerBusy, TrackerError, TrackerUnavailable
from beads_runner.tracker import parse
from beads_runner.tracker.base import NEEDS_HUMAN_LABEL, Issue
from beads_runner.tracker.jsonl_format import (
    Line, Store, base36, children_of, now_rfc3339, open_blockers, own_deps, ready_ids, uuid7,
)

LOCK_TIMEOUT = 30.0


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

    def _read(self) -> Store:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise self._missing() from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TrackerUnavailable(f"cannot read {self.path}: {exc}", fix=f"make {self.path} a readable UTF-8 file") \
                from None
        lines: list[Line] = []
        for number, text in enumerate(raw.splitlines(), 1):
            if not text.strip():
                lines.append(Line(text=text))
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
            lines.append(Line(text=text, obj=obj if is_issue else None))
        return Store(self.path, lines)

    def _write(self, store: Store) -> None:
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
    def _modify(self) -> Iterator[Store]:
        with self._locked():
            store = self._read()
            yield store
            if store.dirty:
                self._write(store)

    def _snapshot(self) -> Store:
        with self._locked():
            return self._read()

    # -- conversions --------------------------------------------------------------------------

    def _issue(self, store: Store, raw: dict[str, Any]) -> Issue:
        """An Issue with blockers resolved against the store, as `bd show` would print it."""
        resolved = []
        for dep in own_deps(raw):
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
                self._write(Store(self.path, []))

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
            blockers = open_blockers(store.index, issue)
            if issue.get("issue_type") == "epic":
                blockers += [c for c in children_of(store.index).get(issue_id, [])
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
            comments.append({"id": uuid7(), "issue_id": issue_id, "author": self.actor, "text": text,
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

    def _prefix(self, store: Store) -> str:
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

    def _new_id(self, store: Store, title: str) -> str:
        prefix = self._prefix(store)
        digest = base36(hashlib.sha256(f"{title}|{time.time_ns()}|{secrets.token_hex(8)}".encode()).digest())
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
            for dep in own_deps(issue):
                if str(dep["depends_on_id"]) == depends_on_id:
                    if (dep.get("type") or "blocks") != type:
                        raise TrackerError(f"dependency {issue_id} -> {depends_on_id} already exists with type "
                                           f"{dep.get('type')} (requested {type})")
                    return
            deps = issue.get("dependencies") if isinstance(issue.get("dependencies"), list) else []
            deps.append(self._dep(issue_id, depends_on_id, type))
            issue["dependencies"] = deps
            if "dependency_count" in issue:
                issue["dependency_count"] = len(own_deps(issue))
            store.touch(issue)
