"""The script of the scripted model (see the package's docstring for its shape): loaded and checked."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MODEL_ID = "scripted"
_WORKDIR = re.compile(r"^\s*Working directory:\s*(.+?)\s*$", re.MULTILINE)


class ScriptError(ValueError):
    """The script is not in the expected shape."""


def content_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
            elif isinstance(part, str):
                out.append(part)
        return "\n".join(out)
    return ""


def _check_turn(turn: Any, where: str) -> dict[str, Any]:
    if not isinstance(turn, dict):
        raise ScriptError(f"{where}: a turn must be an object with 'text' and/or 'tools'")
    tools = turn.get("tools") or []
    if not isinstance(tools, list):
        raise ScriptError(f"{where}.tools: must be a list")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise ScriptError(f"{where}.tools[{i}]: needs a string 'name'")
        if not isinstance(tool.get("args", {}), dict):
            raise ScriptError(f"{where}.tools[{i}].args: must be an object")
    return {"text": str(turn.get("text", "")), "tools": tools, "hang": bool(turn.get("hang", False))}


def load_script(script: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """Validate and normalise a script (a dict or a JSON file path)."""
    if isinstance(script, (str, os.PathLike)):
        try:
            data = json.loads(Path(script).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ScriptError(f"cannot read script {script}: {exc}") from None
    else:
        data = dict(script)
    if not isinstance(data, dict):
        raise ScriptError("a script is a JSON object with 'scenarios' and optional 'fallback'")
    scenarios = []
    for i, raw in enumerate(data.get("scenarios") or []):
        where = f"scenarios[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("match"), str) or not raw["match"]:
            raise ScriptError(f"{where}: needs a non-empty string 'match'")
        rounds = raw.get("rounds") or []
        if not isinstance(rounds, list) or not all(isinstance(r, list) for r in rounds):
            raise ScriptError(f"{where}.rounds: must be a list of lists of turns")
        error = raw.get("error")
        if error is not None and (not isinstance(error, dict) or not isinstance(error.get("status", 500), int)):
            raise ScriptError(f"{where}.error: must be an object like {{\"status\": 500}}")
        times = raw.get("times")
        if times is not None and (not isinstance(times, int) or times < 0):
            raise ScriptError(f"{where}.times: must be a non-negative integer")
        scenarios.append({
            "name": str(raw.get("name") or raw["match"]),
            "match": raw["match"],
            "delay": float(raw.get("delay", 0.0) or 0.0),
            "hang": bool(raw.get("hang", False)),
            "error": error,
            "times": times,
            "rounds": [[_check_turn(t, f"{where}.rounds[{k}][{j}]") for j, t in enumerate(r)]
                       for k, r in enumerate(rounds)],
        })
    fallback = data.get("fallback") or {"text": "No scripted answer matched; I did nothing."}
    fallback_turn = _check_turn(fallback, "fallback")
    outage = data.get("outage")
    if outage is not None:
        if not isinstance(outage, dict) or not isinstance(outage.get("seconds"), (int, float)) \
                or outage["seconds"] <= 0 or not isinstance(outage.get("status", 429), int):
            raise ScriptError('outage: must be an object like {"status": 429, "seconds": 60, "message": ...}')
    return {
        "scenarios": scenarios,
        "outage": outage,
        "fallback": {"name": "fallback", "match": "", "delay": float(fallback.get("delay", 0.0) or 0.0),
                     "hang": False, "error": None, "times": None, "rounds": [[fallback_turn]]},
    }
