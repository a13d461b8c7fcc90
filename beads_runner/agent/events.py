"""opencode's `run --format json` event stream, folded into the facts the runner needs.

One JSON object a line: `step_start`, `text`, `tool_use`, `step_finish`, `error` (opencode 1.18.33;
see /work/shared/opencode/CONTRACT.md). There is no final `done` event: the end is EOF, so the
verdict needs the exit code too. `SessionEvents` is pure and incremental: feed it lines as they
come; garbage and unknown event types are counted and otherwise ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from beads_runner.agent.base import TokenUsage


@dataclass(frozen=True)
class ToolUse:
    tool: str
    status: str  # "completed" | "error" (opencode prints a tool only when it finished)
    error: str = ""


@dataclass(frozen=True)
class ErrorEvent:
    name: str  # "APIError", "UnknownError", ...
    message: str
    status_code: int | None = None
    retryable_hint: bool | None = None  # opencode's own data.isRetryable, when given


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""  # one line, "" when ok
    retryable: bool = True


# Errors no retry can cure: credentials, unknown models/providers, bad requests, too-long context.
_PERMANENT_NAMES = re.compile(r"auth|modelnotfound|providernotfound|initerror|contextoverflow", re.IGNORECASE)
_TIMEOUT_MESSAGE = re.compile(r"timed out|timeout|ETIMEDOUT|ECONNRESET|ECONNREFUSED|socket hang up|"
                              r"fetch failed|connection (?:refused|reset|closed)", re.IGNORECASE)
# opencode 1.18.33 reports an unknown model (and other configuration faults it cannot name) as
# UnknownError "Unexpected server error. Check server logs for details." before any model call.
_UNEXPECTED = "Unexpected server error"
# ... and `opencode serve` (agent.mode = "server") names it: "Model not found: provider/model."
_NOT_FOUND = re.compile(r"^(?:model|provider) not found\b", re.IGNORECASE)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def step_usage(part: dict[str, Any]) -> tuple[TokenUsage, float]:
    """The tokens and cost of one `step_finish` event's `part` (missing or odd values count as 0)."""
    tokens = part.get("tokens") if isinstance(part.get("tokens"), dict) else {}
    cache = tokens.get("cache") if isinstance(tokens.get("cache"), dict) else {}
    usage = TokenUsage(
        total=_int(tokens.get("total")), input=_int(tokens.get("input")),
        output=_int(tokens.get("output")), reasoning=_int(tokens.get("reasoning")),
        cache_read=_int(cache.get("read")), cache_write=_int(cache.get("write")))
    cost = part.get("cost")
    return usage, float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else 0.0


@dataclass
class SessionEvents:
    """Accumulates one session's event stream. Feed raw lines with `feed()`."""

    session_id: str | None = None
    tokens: TokenUsage = field(default_factory=TokenUsage)
    cost: float = 0.0
    summary: str = ""  # the last text part
    tools: list[ToolUse] = field(default_factory=list)
    error: ErrorEvent | None = None  # the last error event
    last_reason: str | None = None  # the last step_finish reason
    steps: int = 0  # step_finish events
    events: int = 0  # JSON events parsed (any type)
    garbage: int = 0  # non-empty lines that were not a JSON object
    unknown: int = 0  # events of a type this parser does not know
    provider_retries: int = 0  # provider_retry events (agent.mode = "server")

    def feed(self, line: str | bytes) -> dict[str, Any] | None:
        """Take one line; return the parsed event (None for blank or garbage lines)."""
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        line = line.strip()
        if not line:
            return None
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            self.garbage += 1
            return None
        if not isinstance(event, dict):
            self.garbage += 1
            return None
        self.add(event)
        return event

    def add(self, event: dict[str, Any]) -> None:
        """Take one parsed event."""
        self.events += 1
        sid = event.get("sessionID")
        part = event.get("part") if isinstance(event.get("part"), dict) else {}
        if not isinstance(sid, str):
            sid = part.get("sessionID")
        if isinstance(sid, str) and sid and self.session_id is None:
            self.session_id = sid
        kind = event.get("type")
        if kind == "text":
            text = part.get("text")
            if isinstance(text, str) and text.strip():
                self.summary = text.strip()
        elif kind == "tool_use":
            state = part.get("state") if isinstance(part.get("state"), dict) else {}
            error = state.get("error")
            self.tools.append(ToolUse(tool=str(part.get("tool") or "?"), status=str(state.get("status") or "?"),
                                      error=str(error) if error else ""))
        elif kind == "step_finish":
            self.steps += 1
            reason = part.get("reason")
            self.last_reason = str(reason) if reason is not None else None
            tokens, cost = step_usage(part)
            self.tokens = self.tokens + tokens
            self.cost += cost
        elif kind == "error":
            self.error = _parse_error(event.get("error"))
        elif kind == "provider_retry":  # agent.mode = "server": opencode retries the provider
            self.provider_retries += 1
        elif kind != "step_start":
            self.unknown += 1

    @property
    def failed_tools(self) -> list[ToolUse]:
        return [t for t in self.tools if t.status == "error"]

    def verdict(self, exit_code: int | None) -> Verdict:
        """ok only if opencode exited 0, printed no error event and its last step ended with "stop"."""
        if self.error is not None:
            return _error_verdict(self.error)
        if exit_code is None:
            return Verdict(False, "opencode did not exit (killed)", True)
        if exit_code != 0:
            if exit_code < 0:
                return Verdict(False, f"opencode was killed by signal {-exit_code}", True)
            return Verdict(False, f"opencode exited {exit_code}", True)
        if self.last_reason is None:
            return Verdict(False, "session ended without finishing (no step finished)", True)
        if self.last_reason != "stop":
            return Verdict(False, f"session ended without finishing (last step: {self.last_reason})", True)
        return Verdict(True, "", True)


def _parse_error(raw: Any) -> ErrorEvent:
    if not isinstance(raw, dict):
        return ErrorEvent(name="Error", message=_one_line(str(raw)) if raw else "unknown error")
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    message = data.get("message") or raw.get("message") or ""
    status = data.get("statusCode", raw.get("statusCode"))
    hint = data.get("isRetryable")
    return ErrorEvent(
        name=str(raw.get("name") or "Error"),
        message=_one_line(message) if message else "",
        status_code=status if isinstance(status, int) and not isinstance(status, bool) else None,
        retryable_hint=hint if isinstance(hint, bool) else None,
    )


def _error_verdict(error: ErrorEvent) -> Verdict:
    message = error.message or "(no message)"
    status = error.status_code
    if status is not None:
        retryable = status >= 500 or status in (408, 409, 425, 429)
        return Verdict(False, f"model API error (HTTP {status}): {message}", retryable)
    if _PERMANENT_NAMES.search(error.name):
        return Verdict(False, f"opencode error ({error.name}): {message}", False)
    if _TIMEOUT_MESSAGE.search(message):
        return Verdict(False, f"model request failed ({error.name}): {message}", True)
    if error.name == "UnknownError" and _NOT_FOUND.search(message):
        return Verdict(False, f"opencode error ({error.name}): {message} (check agent.model)", False)
    if error.name == "UnknownError" and _UNEXPECTED in message:
        return Verdict(False, f"opencode error ({error.name}): {message} "
                              "(check agent.model and the provider configuration)", False)
    if error.name == "APIError":
        return Verdict(False, f"model API error: {message}", error.retryable_hint is not False)
    return Verdict(False, f"opencode error ({error.name}): {message}", error.retryable_hint is not False)
