"""OpenCode permissions for a headless session: every class set, refusals recognised and named."""

from __future__ import annotations

import json

from beads_runner.agent.permissions import (
    PERMISSION_CLASSES, asked_permission, permission_json, refused_permission,
)

# The error texts opencode 1.18.33 puts in a refused tool call's state.error.
DENIED = ('The user has specified a rule which prevents you from using this specific tool call. Here are some of '
          'the relevant rules [{"permission":"*","pattern":"*","action":"allow"},'
          '{"permission":"external_directory","pattern":"*","action":"deny"}]')
REJECTED = "The user rejected permission to use this specific tool call."


def tool_use(tool: str, status: str, error: str = "") -> dict:
    return {"type": "tool_use", "part": {"tool": tool, "state": {"status": status, "error": error}}}


def test_every_class_of_opencode_1_18_33_is_set_and_none_asks():
    assert set(PERMISSION_CLASSES) == {"read", "edit", "glob", "grep", "list", "bash", "task", "external_directory",
                                       "todowrite", "question", "webfetch", "websearch", "lsp", "doom_loop", "skill"}
    merged = json.loads(permission_json(None))
    assert '"ask"' not in json.dumps(merged)
    assert json.loads(permission_json('{"bash": "deny"}'))["bash"] == "deny"
    assert permission_json('"allow"') == '"allow"'  # a user's blanket choice stays theirs
    assert json.loads(permission_json("not json")) == merged


def test_a_denied_or_rejected_tool_call_is_named_and_others_are_not():
    assert refused_permission(tool_use("write", "error", DENIED)) == "external_directory (tool write, denied)"
    assert refused_permission(tool_use("bash", "error", REJECTED)) == "bash (tool bash, asked and auto-rejected)"
    assert refused_permission(tool_use("bash", "error", "exit code 1")) is None
    assert refused_permission(tool_use("write", "completed")) is None
    assert refused_permission({"type": "text", "part": {"text": DENIED}}) is None
    assert asked_permission(["x", "! permission requested: doom_loop (*); auto-rejecting"]) == "doom_loop"
