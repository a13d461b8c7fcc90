"""Pure functions that turn what `bd` prints into data or typed errors.

Nothing here runs a process. `check_output` is the one entry point for a finished bd call: it
returns the call's JSON payload (envelope removed) or raises a `TrackerError` subclass whose
message names the bd command and quotes bd's own text. See /work/shared/beads/CONTRACT.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError

from beads_runner import versions
from beads_runner.errors import ClaimConflict, IssueNotFound, TrackerBusy, TrackerError, TrackerUnavailable
from beads_runner.tracker.base import Blocker, Issue

MAX_QUOTED = 600  # how much of bd's text an error message quotes


class CloseBlocked(TrackerError):
    """bd refused to close an issue because of open blockers (or open children of an epic)."""


class UnknownFlag(TrackerError):
    """bd rejected a flag: the installed bd is older (or newer) than what the runner expects."""


# Lock contention and other transient store trouble: retrying helps. Matched case-insensitively.
_BUSY_PATTERNS = [
    r"database is locked",
    r"database (?:table )?is busy",
    r"\bsqlite_busy\b",
    r"\block(?:file)? (?:is )?(?:already )?held\b",
    r"\bresource temporarily unavailable\b",
    r"\beagain\b",
    r"\bewouldblock\b",
    r"\blocked by another\b",
    r"\b(?:is|was|currently) locked\b",
    r"\bcould not (?:acquire|obtain|get)\b[^\n]*\block\b",
    r"\b(?:failed|unable) to (?:acquire|obtain|get|take)\b[^\n]*\block\b",
    r"\block (?:timeout|timed out|contention|wait timeout)\b",
    r"\btimed out waiting for (?:the )?(?:\w+ )?lock\b",
    r"sql-server\.lock",
    r"\bnoms\b[^\n]*\block\b",
    r"\bdolt\b[^\n]*\block\b",
    r"\block\b[^\n]*\bdolt\b",
    r"\bmanifest\b[^\n]*\block",
    r"\bdeadlock\b",
    r"\bserialization failure\b",
    r"\btry restarting transaction\b",
    r"\btransaction conflicts with\b",
]
_BUSY = re.compile("|".join(f"(?:{p})" for p in _BUSY_PATTERNS), re.IGNORECASE)
_NO_DATABASE = re.compile(r"no beads database found|no \.beads directory found|beads database not found",
                          re.IGNORECASE)
_NOT_FOUND = re.compile(
    r"no issues? found matching|issue not found|\bissue [^\s:]+ not found|no issue with id|"
    r"resolving id [^\n]*: no issue|no issue found",
    re.IGNORECASE,
)
_CLAIMED = re.compile(r"already claimed by\s*(?P<who>[^\s,;]+)?", re.IGNORECASE)
_CLOSE_BLOCKED = re.compile(r"cannot close\b[^\n]*\b(?:blocked by|open (?:blockers|children|issues))",
                            re.IGNORECASE)
_UNKNOWN_FLAG = re.compile(r"unknown (?:shorthand )?flag:?\s*(?P<flag>'[^']*'(?: in \S+)?|\S+)", re.IGNORECASE)
_UNKNOWN_COMMAND = re.compile(r"unknown command\s*(?P<cmd>\"[^\"]*\"|\S+)?", re.IGNORECASE)
_VERSION = re.compile(r"\bv?(\d+)\.(\d+)(?:\.(\d+))?")


def is_busy_text(text: str) -> bool:
    """bd's words say the store was busy (held by another process): nothing was written."""
    return bool(_BUSY.search(text))


def quote(text: str, limit: int = MAX_QUOTED) -> str:
    """bd's text made fit for one error message: stripped, shortened."""
    text = text.strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def describe_command(argv: Sequence[str], limit: int = 160) -> str:
    """`bd update bd-a3f2 --claim` as shown in messages: the argv minus the runner's global flags."""
    shown: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--json":
            continue
        if arg == "--actor":
            skip = True
            continue
        shown.append(arg if arg and not re.search(r"[\s'\"\\]", arg) else json.dumps(arg))
    text = " ".join(shown)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# JSON payloads


def loads_or_none(text: str) -> Any:
    """Parse `text` as one JSON value; None when it is not JSON (or empty)."""
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _find_error_object(text: str) -> dict[str, Any] | None:
    """An `{"error": ...}` object in text that may carry other lines (stderr often does)."""
    data = loads_or_none(text)
    if data is None and "{" in text:
        # bd sometimes prints a warning line before the JSON: try each line, then from each '{'.
        for line in text.splitlines():
            data = loads_or_none(line)
            if isinstance(data, dict):
                break
        else:
            decoder = json.JSONDecoder()
            for match in re.finditer(r"\{", text):
                try:
                    data, _ = decoder.raw_decode(text, match.start())
                except ValueError:
                    continue
                if isinstance(data, dict) and "error" in data:
                    break
            else:
                data = None
    if isinstance(data, dict):
        if "error" in data and data["error"]:
            return data
        inner = data.get("data") if "schema_version" in data else None
        if isinstance(inner, dict) and inner.get("error"):
            return inner
    return None


def unwrap(data: Any) -> Any:
    """Remove the `BD_JSON_ENVELOPE` wrapper `{"schema_version": 1, "data": ...}` if present."""
    if isinstance(data, dict) and "data" in data and "schema_version" in data:
        extra = set(data) - {"schema_version", "data", "error", "hint", "warnings", "warning"}
        if not extra:
            return data["data"]
    return data


def _error_text(obj: dict[str, Any]) -> tuple[str, str | None]:
    error = obj.get("error")
    message = error if isinstance(error, str) else json.dumps(error)
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("error") or message)
    hint = obj.get("hint")
    return message, (str(hint) if hint else None)


def classify_error(command: str, text: str, hint: str | None = None, exit_code: int | None = None) -> TrackerError:
    """The typed error for bd's failure `text` of `command` (as shown by describe_command)."""
    said = quote(text) or f"(no output; exit {exit_code})"
    where = f"`{command}` failed" + (f" (exit {exit_code})" if exit_code not in (None, 0) else "")
    base_fix = f"bd's hint: {hint}" if hint else None
    if _NO_DATABASE.search(text):
        return TrackerUnavailable(
            f"{where}: no beads database here: {said}",
            fix="run `bd init` in the repository (or set BEADS_DIR to the .beads directory)",
        )
    if _BUSY.search(text):
        return TrackerBusy(
            f"{where}: the beads store is busy (lock contention): {said}",
            fix=base_fix or "retry; if it persists, look for another bd process holding the store open",
        )
    if m := _CLAIMED.search(text):
        who = (m.group("who") or "someone else").rstrip(".")
        return ClaimConflict(f"{where}: the issue is already claimed by {who}: {said}", fix=base_fix)
    if _NOT_FOUND.search(text):
        return IssueNotFound(f"{where}: no such issue: {said}",
                             fix=base_fix or "check the id with `bd list` or `bd show <id>`")
    if _CLOSE_BLOCKED.search(text):
        return CloseBlocked(f"{where}: bd refuses to close it while it has open blockers: {said}",
                            fix=base_fix or "close the blocking issues first (or `bd close --force` by hand)")
    if m := _UNKNOWN_FLAG.search(text):
        flag = m.group("flag").strip()
        return UnknownFlag(
            f"{where}: this bd does not know the flag {flag}: {said}",
            fix="install a bd version this runner supports (`bd version`; 1.0.4 or later recommended)",
        )
    if m := _UNKNOWN_COMMAND.search(text):
        return TrackerError(f"{where}: this bd does not know the command {m.group('cmd') or ''}: {said}".strip(),
                            fix="install a bd version this runner supports (1.0.4 or later recommended)")
    return TrackerError(f"{where}: {said}", fix=base_fix)


def check_output(command: str, exit_code: int, stdout: str, stderr: str, *, expect_json: bool = True) -> Any:
    """The JSON payload of a finished bd call, or the typed error it reported.

    `command` names the call in messages (see describe_command). With `expect_json=False` a
    successful call's stdout is not required to be JSON (None is returned when it is not)."""
    for stream in (stdout, stderr):
        err = _find_error_object(stream)
        if err is not None:
            message, hint = _error_text(err)
            return _raise(classify_error(command, message, hint, exit_code))
    if exit_code != 0:
        text = "\n".join(t.strip() for t in (stderr, stdout) if t.strip())
        return _raise(classify_error(command, text, None, exit_code))
    data = loads_or_none(stdout)
    if data is None:
        if not expect_json:
            return None
        if stdout.strip() == "null":
            return None
        shown = quote(stdout, 200) or "nothing"
        extra = f" (stderr: {quote(stderr, 200)})" if stderr.strip() else ""
        raise TrackerBusy(
            f"`{command}` exited 0 but printed output that is not JSON: {shown!s}{extra}",
            fix="retry; if it persists, run the command by hand and check the bd version (`bd version`)",
        )
    return unwrap(data)


def _raise(error: TrackerError) -> Any:
    raise error


# ---------------------------------------------------------------------------------------------
# Issues


def blockers_from(dependencies: Any, issue_id: str) -> list[Blocker]:
    """Normalise either dependency shape into Blockers.

    Raw records (ready/list/export): `{"issue_id", "depends_on_id", "type", ...}`; records whose
    `issue_id` is another issue (a dependent, not a dependency) are skipped. Resolved objects
    (show): an issue object with `dependency_type` and its current `status`."""
    if not isinstance(dependencies, list):
        return []
    result: list[Blocker] = []
    for dep in dependencies:
        if isinstance(dep, str) and dep:
            result.append(Blocker(id=dep))
            continue
        if not isinstance(dep, dict):
            continue
        if dep.get("depends_on_id") not in (None, ""):
            owner = dep.get("issue_id")
            if owner not in (None, "") and str(owner) != issue_id:
                continue
            target = str(dep["depends_on_id"])
            dep_type = dep.get("type") or dep.get("dependency_type") or "blocks"
            status = dep.get("status")
        elif dep.get("id") not in (None, ""):
            target = str(dep["id"])
            dep_type = dep.get("dependency_type") or dep.get("type") or "blocks"
            status = dep.get("status")
        else:
            continue
        result.append(Blocker(id=target, type=str(dep_type), status=str(status) if status else None))
    return result


def issue_from_dict(obj: Any, command: str = "bd") -> Issue:
    """One issue object as bd prints it (any era) → Issue. Raises TrackerError if it is not one."""
    if not isinstance(obj, dict) or obj.get("id") in (None, ""):
        raise TrackerError(f"`{command}` printed something that is not an issue object: {quote(json.dumps(obj), 200)}")
    data = dict(obj)
    data["id"] = str(obj["id"])
    blockers = blockers_from(obj.get("dependencies"), data["id"])
    data["blockers"] = [b.model_dump() for b in blockers]
    if not data.get("parent"):
        parents = [b.id for b in blockers if b.type == "parent-child"]
        data["parent"] = parents[0] if parents else None
    else:
        data["parent"] = str(data["parent"])
    labels = data.get("labels")
    if isinstance(labels, list):
        data["labels"] = sorted(str(label) for label in labels if label is not None)
    elif labels is not None:
        data["labels"] = []
    for key in ("title", "description", "design", "acceptance_criteria", "notes", "status", "issue_type",
                "assignee", "close_reason", "created_at", "updated_at", "created_by", "started_at", "defer_until"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            data[key] = str(value)
    try:
        return Issue.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise TrackerError(f"`{command}` printed issue {data['id']!r} in a shape the runner cannot read: "
                           f"{problems}") from None


def issues_from_data(data: Any, command: str = "bd") -> list[Issue]:
    """A list of issues from ready/list/show/update/close output (array, single object or null)."""
    data = unwrap(data)
    if data is None:
        return []
    if isinstance(data, dict):
        for key in ("issues", "items", "results"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            data = [data]
    if not isinstance(data, list):
        raise TrackerError(f"`{command}` printed JSON that is not a list of issues: {quote(json.dumps(data), 200)}")
    return [issue_from_dict(item, command) for item in data]


def comments_from_data(data: Any, command: str = "bd") -> list[dict[str, Any]]:
    """`bd comments <id> --json` → dicts with id (as text), issue_id, author, text, created_at."""
    data = unwrap(data)
    if data is None:
        return []
    if isinstance(data, dict):
        data = data.get("comments", [data])
    if not isinstance(data, list):
        raise TrackerError(f"`{command}` printed JSON that is not a list of comments: {quote(json.dumps(data), 200)}")
    result = []
    for item in data:
        if not isinstance(item, dict):
            raise TrackerError(f"`{command}` printed a comment that is not an object: {quote(json.dumps(item), 200)}")
        comment = dict(item)
        comment["id"] = "" if item.get("id") is None else str(item["id"])
        for key in ("issue_id", "author", "text", "created_at"):
            comment[key] = "" if item.get(key) is None else str(item[key])
        result.append(comment)
    return result


# ---------------------------------------------------------------------------------------------
# Versions


def parse_version(stdout: str) -> str:
    """`bd version` output (JSON in any shape, or text like `bd version 1.0.3 (dev)`) → "1.0.3"."""
    data = unwrap(loads_or_none(stdout))
    candidates: list[str] = []
    if isinstance(data, dict):
        for key in ("version", "Version", "client_version", "bd_version"):
            if isinstance(data.get(key), (str, int, float)):
                candidates.append(str(data[key]))
    elif isinstance(data, str):
        candidates.append(data)
    candidates.append(stdout)
    for text in candidates:
        if m := _VERSION.search(text):
            return ".".join(g for g in m.groups() if g is not None)
    raise TrackerError(f"`bd version` printed no version number: {quote(stdout, 200) or 'nothing'}",
                       fix="check that tracker.command points at the beads `bd` executable")


def parse_store_mode(data: Any) -> str:
    """How bd stores issues, from `bd dolt show --json` (or `bd dolt status --json`): "embedded"
    (in-process Dolt, one writer at a time), "server host:port" (a dolt sql-server), or the
    backend's own name; "unknown" when the output says neither."""
    data = unwrap(data)
    if not isinstance(data, dict):
        return "unknown"
    embedded = data.get("embedded")
    mode = data.get("mode")
    if embedded is True or mode == "embedded":
        return "embedded"
    if embedded is False or mode in ("server", "external", "managed"):
        where = f"{data['host']}:{data['port']}" if data.get("host") and data.get("port") else ""
        return f"server {where}".strip()
    backend = data.get("backend")
    return str(backend) if isinstance(backend, str) and backend else "unknown"


def at_least(version: str, *wanted: int) -> bool:
    """Whether bd's `version` ("1.0.3") is `wanted` (1, 0, 4) or later (compared in `beads_runner.versions`)."""
    return versions.at_least(version, *wanted)


def first(items: Iterable[Issue], issue_id: str) -> Issue | None:
    """The issue with this id among items (bd show may echo more than one), else the first one."""
    items = list(items)
    for item in items:
        if item.id == issue_id:
            return item
    return items[0] if items else None
