"""OpenCode's permissions, set for a headless session: never a question nobody can answer.

opencode 1.18.33 knows these permission classes (its `PermissionConfig` schema): read, edit, glob,
grep, list, bash, task, external_directory, todowrite, question, webfetch, websearch, lsp,
doom_loop, skill. An unset class falls back to opencode's defaults, some of which are "ask"
(`doom_loop`, `external_directory`, reading `.env` files); `opencode run` auto-rejects an ask and
goes on, so the agent retries and flounders. The runner sets every class to allow or deny:
work inside the worktree is allowed, anything outside it (`external_directory`) is denied, and so
are questions and a doom loop (the same tool call over and over).

A tool call refused by a permission shows in the event stream as a `tool_use` whose error is
opencode's PermissionDeniedError ("specified a rule…", with the rules) or PermissionRejectedError
("rejected permission…"). The runner ends the session there, naming the permission: nothing a
retry would change.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Every class of opencode 1.18.33, explicitly. (A later opencode with new classes: `agent.env`
# OPENCODE_PERMISSION can add them; keys given there win over these.)
HEADLESS_PERMISSION: dict[str, Any] = {
    "read": {"*": "allow", "*.env": "deny", "*.env.*": "deny", "*.env.example": "allow"},
    "edit": "allow",
    "glob": "allow",
    "grep": "allow",
    "list": "allow",
    "bash": "allow",
    "task": "allow",
    "external_directory": "deny",  # no reads or writes outside the worktree
    "todowrite": "allow",
    "question": "deny",  # nobody is there to answer
    "webfetch": "allow",
    "websearch": "allow",
    "lsp": "allow",
    "doom_loop": "deny",  # the same call three times: stop, do not ask
    "skill": "allow",
}
PERMISSION_CLASSES = tuple(HEADLESS_PERMISSION)

_DENIED = "specified a rule which prevents you"
_REJECTED = ("rejected permission", "QuestionRejectedError", "user dismissed")
_RULE_PERMISSION = re.compile(r'"permission"\s*:\s*"([A-Za-z_]+)"')
_ASKED = re.compile(r"permission requested: ([A-Za-z_]+)")


def permission_json(user_value: str | None) -> str:
    """OPENCODE_PERMISSION for a session: every class set, the user's own keys (a JSON object) winning."""
    merged = dict(HEADLESS_PERMISSION)
    if user_value:
        try:
            given = json.loads(user_value)
        except ValueError:
            given = None
        if isinstance(given, dict):
            merged.update(given)
        elif isinstance(given, str):  # "allow" for everything: the user's explicit choice
            return user_value
    return json.dumps(merged)


def refused_permission(event: dict[str, Any]) -> str | None:
    """For a tool call a permission refused: "<permission> (tool <tool>)"; None for anything else."""
    if event.get("type") != "tool_use":
        return None
    part = event.get("part") if isinstance(event.get("part"), dict) else {}
    state = part.get("state") if isinstance(part.get("state"), dict) else {}
    if state.get("status") != "error":
        return None
    error = str(state.get("error") or "")
    tool = str(part.get("tool") or "?")
    if _DENIED in error:
        rules = _RULE_PERMISSION.findall(error)
        # The rules quoted are the relevant ones; the refusing one is the last that is not "*".
        named = [r for r in rules if r != "*"]
        permission = named[-1] if named else tool
        return f"{permission} (tool {tool}, denied)"
    if any(marker in error for marker in _REJECTED):
        return f"{tool} (tool {tool}, asked and auto-rejected)"
    return None


def asked_permission(stderr_lines: list[str]) -> str | None:
    """The permission opencode said it auto-rejected on stderr ("permission requested: X (…)")."""
    for line in reversed(stderr_lines):
        if m := _ASKED.search(line):
            return m.group(1)
    return None


# Every permission class opencode 1.18.33 knows, set explicitly: what a non-interactive `opencode run`
# allows (its config's "*": "allow") stays allowed; what it would ask (and then auto-reject) is denied,
# so nothing waits for an answer. `OPENCODE_PERMISSION` (the environment or agent.env) overrides a
# class, with "ask" read as "deny".
ALLOWED_CLASSES = ("read", "edit", "glob", "grep", "list", "bash", "task", "todowrite", "todoread", "webfetch",
                   "websearch", "codesearch", "lsp", "skill")
DENIED_CLASSES = ("question", "plan_enter", "plan_exit", "doom_loop", "external_directory")


def permission_rules(override: str | None) -> list[dict[str, str]]:
    """The session's permission ruleset (opencode applies the last matching rule)."""
    rules = [{"permission": "*", "pattern": "*", "action": "allow"}]
    rules += [{"permission": name, "pattern": "*", "action": "allow"} for name in ALLOWED_CLASSES]
    rules += [{"permission": name, "pattern": "*", "action": "deny"} for name in DENIED_CLASSES]
    try:
        user = json.loads(override) if override else {}
    except json.JSONDecodeError:
        user = {}
    if isinstance(user, str):  # "allow" | "deny" | "ask" for everything
        user = {"*": user}
    if isinstance(user, dict):
        for name, value in user.items():
            patterns = value if isinstance(value, dict) else {"*": value}
            for pattern, action in patterns.items():
                if action in ("allow", "deny", "ask"):
                    rules.append({"permission": str(name), "pattern": str(pattern),
                                  "action": "deny" if action == "ask" else action})
    return rules
