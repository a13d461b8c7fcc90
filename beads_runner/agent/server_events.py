"""What `opencode serve` streams, read as `opencode run --format json` would print it: the server's
events mapped to run's events (opencode's own mapping in its `run` command), plus the provider
retries that run hides."""

from __future__ import annotations

import time
from typing import Any

from beads_runner.agent.base import ProviderRetry


def run_events(raw: dict[str, Any], session_id: str, tree: set[str]) -> list[dict[str, Any]]:
    """The `opencode run --format json` events one server event stands for (opencode's own mapping
    in its `run` command), plus `provider_retry` for a retry status. Children of the session (the
    `task` tool's subagents) are in `tree`; their parts, like `run`'s, are not ours to print."""
    kind = raw.get("type")
    props = raw.get("properties") if isinstance(raw.get("properties"), dict) else {}
    now = int(time.time() * 1000)

    def event(name: str, **fields: Any) -> dict[str, Any]:
        return {"type": name, "timestamp": now, "sessionID": session_id, **fields}

    if kind == "session.created":
        info = props.get("info") if isinstance(props.get("info"), dict) else {}
        if info.get("parentID") in tree and isinstance(info.get("id"), str):
            tree.add(info["id"])
        return []
    if kind == "message.part.updated":
        part = props.get("part") if isinstance(props.get("part"), dict) else {}
        if part.get("sessionID") != session_id:
            return []
        ptype = part.get("type")
        state = part.get("state") if isinstance(part.get("state"), dict) else {}
        if ptype == "tool" and state.get("status") in ("completed", "error"):
            return [event("tool_use", part=part)]
        if ptype == "step-start":
            return [event("step_start", part=part)]
        if ptype == "step-finish":
            return [event("step_finish", part=part)]
        if ptype == "text" and isinstance(part.get("time"), dict) and part["time"].get("end"):
            return [event("text", part=part)]
        return []
    if kind == "session.error" and props.get("sessionID") == session_id and props.get("error"):
        return [event("error", error=props["error"])]
    if kind == "session.status" and props.get("sessionID") == session_id:
        status = props.get("status") if isinstance(props.get("status"), dict) else {}
        if status.get("type") == "retry":
            return [event("provider_retry", attempt=status.get("attempt"), message=status.get("message") or "",
                          next=status.get("next"))]
    return []


def session_of(raw: dict[str, Any]) -> str | None:
    props = raw.get("properties") if isinstance(raw.get("properties"), dict) else {}
    sid = props.get("sessionID")
    if isinstance(sid, str):
        return sid
    for key in ("part", "info"):
        inner = props.get(key)
        if isinstance(inner, dict) and isinstance(inner.get("sessionID"), str):
            return inner["sessionID"]
    return None


def provider_retry(event: dict[str, Any]) -> ProviderRetry:
    nxt = event.get("next")
    attempt = event.get("attempt")
    return ProviderRetry(
        attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 0,
        message=str(event.get("message") or ""),
        next_at=nxt / 1000.0 if isinstance(nxt, (int, float)) and not isinstance(nxt, bool) and nxt > 0 else None,
    )
