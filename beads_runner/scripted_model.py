"""A scripted OpenAI-compatible model server: real `opencode run` sessions without a real model.

Used by the tests, the demo and the benchmarks. Standard library only.

Script (a dict or a JSON file)::

    {"scenarios": [
       {"match": "demo-1", "delay": 0.0,
        "rounds": [
           [{"text": "Writing hello.py",
             "tools": [{"name": "write", "args": {"filePath": "hello.py", "content": "print('hi')\\n"}}]},
            {"text": "Added hello.py."}],
           [{"text": "Second round answer."}]]},
       {"match": "boom", "error": {"status": 500, "message": "...", "retry_after_ms": 50}, "times": 2},
       {"match": "silence", "hang": true}],
     "fallback": {"text": "No scripted answer matched; I did nothing."}}

The server is stateless: every answer is chosen from the request's own message history, so
concurrent sessions and continued sessions (`opencode run --session <id>`) just work.

- `match`: a substring of the conversation's FIRST user message (the runner's prompt holds the
  issue id and title). The first scenario that matches wins; none → `fallback`.
- Round k answers after the (k+1)-th user message; turn j of a round is the j-th assistant answer
  after the last user message. A turn with `tools` ends with finish_reason "tool_calls", a turn with
  only `text` with "stop". Past the last turn (or round) the server answers the last text with
  "stop", so a script can never make a session loop.
- `delay`: seconds to wait before each answer. `hang: true`: accept and never answer (until
  `stop()`); on a turn (`{"hang": true}`), only that answer hangs.
  `error`: answer `{"status": N, "message": ...}` as an OpenAI-style error body; with
  `"times": N` only the scenario's first N requests fail, the later ones follow `rounds`.
  `error.retry_after_ms` adds a `retry-after-ms` header: opencode 1.18.33 retries retryable errors
  (5xx, 429) 5 times with 2 s doubling backoff (about 75 s in all) unless the server sends
  `retry-after-ms`/`retry-after`, which it honours — tests use it to fail fast.
- Tool calls pass `args` through. A relative `filePath` is made absolute against the
  "Working directory:" line of opencode's system prompt (opencode 1.18.33 would also resolve it
  against `--dir` itself, but its tool schema asks for absolute paths, as a real model sends).

What opencode needs to run against it offline (see `opencode_env()`):

- `OPENCODE_CONFIG_CONTENT` with a provider using npm `@ai-sdk/openai-compatible`, `baseURL` =
  `.url`, `apiKey`, `options.timeout` (ms), and `model` = "scripted/scripted";
  `OPENCODE_DISABLE_MODELS_FETCH=1` (no models.dev fetch), `OPENCODE_DISABLE_AUTOUPDATE=1`,
  `OPENCODE_PERMISSION` allowing edit and bash (an "ask" is auto-rejected in `opencode run`).
- npm provider packages: opencode 1.18.33 BUNDLES `@ai-sdk/openai-compatible`. Checked: with an
  empty `XDG_CACHE_HOME` a session ran and the cache held only an empty `opencode/bin/`; nothing
  was fetched. Packages it does not bundle are installed from npm on first use under
  `$XDG_CACHE_HOME/opencode/packages/<name>` (default `~/.cache/opencode/packages/`), so keep
  XDG_CACHE_HOME shared between tests. Isolate state per test with `XDG_DATA_HOME` (database
  `opencode/opencode.db`, `log/`, `snapshot/`; or `OPENCODE_DB` for the database alone),
  `XDG_STATE_HOME` (locks) and `XDG_CONFIG_HOME` (so the user's opencode config stays out).
- Several sessions starting at once on a never-used data directory race on the database
  migration (some exit 1: "Failed query: CREATE TABLE ..."); once one session has run there,
  concurrent sessions are fine.
- Timing (2 cores): one session with two model calls takes about 4.5 s when the machine is idle.

CLI: `python -m beads_runner.scripted_model --script FILE [--port 0] [--port-file PATH]`.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODEL_ID = "scripted"
_WORKDIR = re.compile(r"^\s*Working directory:\s*(.+?)\s*$", re.MULTILINE)


class ScriptError(ValueError):
    """The script is not in the expected shape."""


def _content_text(content: Any) -> str:
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
    return {
        "scenarios": scenarios,
        "fallback": {"name": "fallback", "match": "", "delay": float(fallback.get("delay", 0.0) or 0.0),
                     "hang": False, "error": None, "times": None, "rounds": [[fallback_turn]]},
    }


class ScriptedModelServer:
    """A threaded HTTP server answering `/v1/chat/completions` from a script. A context manager."""

    def __init__(self, script: Mapping[str, Any] | str | os.PathLike[str], *, host: str = "127.0.0.1",
                 port: int = 0, keep_requests: int = 200):
        self.script = load_script(script)
        self.host = host
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._keep_requests = keep_requests
        self.reset_stats()

    # -- stats -------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self.requests = 0  # chat completion requests received
            self.in_flight = 0
            self.max_in_flight = 0
            self.errors_served = 0
            self.model_list_requests = 0
            self.scenario_requests: dict[str, int] = {}
            self._scenario_failures: dict[str, int] = {}
            self.request_log: list[dict[str, Any]] = []  # the last request bodies, newest last

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "errors_served": self.errors_served,
                "model_list_requests": self.model_list_requests,
                "scenarios": dict(self.scenario_requests),
            }

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> ScriptedModelServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        handler = type("_BoundHandler", (_Handler,), {"model_server": self})
        self._httpd = ThreadingHTTPServer((self.host, self._port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="scripted-model", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()  # releases hanging and delayed requests
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- opencode wiring ---------------------------------------------------------------------
    def opencode_config(self, provider: str = "scripted", model: str = MODEL_ID, *,
                        timeout_ms: int = 60_000) -> dict[str, Any]:
        """The dict for `OPENCODE_CONFIG_CONTENT`: one openai-compatible provider pointing here."""
        return {
            "$schema": "https://opencode.ai/config.json",
            "autoupdate": False,
            "share": "disabled",
            "model": f"{provider}/{model}",
            "small_model": f"{provider}/{model}",
            "provider": {
                provider: {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "Scripted model",
                    "options": {"baseURL": self.url, "apiKey": "x", "timeout": timeout_ms},
                    "models": {model: {"name": "Scripted", "tool_call": True,
                                       "limit": {"context": 200_000, "output": 32_000}}},
                }
            },
            "permission": {"edit": "allow", "bash": "allow", "webfetch": "deny"},
        }

    def opencode_env(self, provider: str = "scripted", model: str = MODEL_ID, *,
                     timeout_ms: int = 60_000) -> dict[str, str]:
        """Environment variables that make `opencode run` use this server, offline and unattended."""
        return {
            "OPENCODE_CONFIG_CONTENT": json.dumps(self.opencode_config(provider, model, timeout_ms=timeout_ms)),
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_SHARE": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
            "OPENCODE_PERMISSION": json.dumps({"edit": "allow", "bash": "allow", "webfetch": "deny"}),
        }

    # -- answering ---------------------------------------------------------------------------
    def choose(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
        """(scenario, turn, finished) for a request body; turn None means: answer with the error."""
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        first = _content_text(messages[users[0]].get("content")) if users else ""
        scenario = next((s for s in self.script["scenarios"] if s["match"] in first), self.script["fallback"])
        with self._lock:
            self.scenario_requests[scenario["name"]] = self.scenario_requests.get(scenario["name"], 0) + 1
            if scenario["error"] is not None:
                failed = self._scenario_failures.get(scenario["name"], 0)
                if scenario["times"] is None or failed < scenario["times"]:
                    self._scenario_failures[scenario["name"]] = failed + 1
                    return scenario, None, True
        rounds = scenario["rounds"] or [[{"text": "", "tools": []}]]
        k = max(len(users) - 1, 0)
        last_user = users[-1] if users else -1
        j = sum(1 for m in messages[last_user + 1:] if m.get("role") == "assistant")
        past = k >= len(rounds)
        round_ = rounds[min(k, len(rounds) - 1)] or [{"text": "", "tools": []}]
        if past or j >= len(round_):
            return scenario, {"text": round_[-1]["text"], "tools": []}, True
        turn = round_[j]
        if turn["tools"] and not body.get("tools"):  # e.g. a title request: it offers no tools
            return scenario, {"text": turn["text"], "tools": []}, True
        return scenario, turn, not turn["tools"]


def _workdir(body: Mapping[str, Any]) -> str | None:
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "system":
            found = _WORKDIR.search(_content_text(message.get("content")))
            if found:
                return found.group(1)
    return None


def _tool_calls(turn: Mapping[str, Any], body: Mapping[str, Any]) -> list[dict[str, Any]]:
    workdir = _workdir(body)
    calls = []
    for tool in turn["tools"]:
        args = dict(tool.get("args") or {})
        path = args.get("filePath")
        if workdir and isinstance(path, str) and path and not posixpath.isabs(path):
            args["filePath"] = posixpath.join(workdir, path)
        calls.append({"id": f"call_{uuid.uuid4().hex[:16]}", "type": "function",
                      "function": {"name": tool["name"], "arguments": json.dumps(args)}})
    return calls


class _Handler(BaseHTTPRequestHandler):
    model_server: ScriptedModelServer
    server_version = "ScriptedModel/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        if os.environ.get("SCRIPTED_MODEL_LOG"):
            super().log_message(format, *args)

    def _json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._release()  # answered: a client that has read the body sees in_flight without it
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            srv = self.model_server
            with srv._lock:
                srv.model_list_requests += 1
            self._json(200, {"object": "list", "data": [
                {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "beads-runner"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except (ValueError, json.JSONDecodeError) as exc:
            self._json(400, {"error": {"message": f"bad request body: {exc}", "type": "invalid_request_error"}})
            return
        srv = self.model_server
        self._counted = True
        with srv._lock:
            srv.requests += 1
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            srv.request_log.append(body)
            del srv.request_log[:-srv._keep_requests]
        try:
            self._answer(srv, body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self._release()

    def _release(self) -> None:
        """Take this request out of `in_flight` (once)."""
        if getattr(self, "_counted", False):
            self._counted = False
            with self.model_server._lock:
                self.model_server.in_flight -= 1

    def _answer(self, srv: ScriptedModelServer, body: dict[str, Any]) -> None:
        scenario, turn, finished = srv.choose(body)
        if scenario["hang"] or (turn is not None and turn.get("hang")):
            srv._stopping.wait()
            self.close_connection = True
            return
        if scenario["delay"] > 0 and srv._stopping.wait(scenario["delay"]):
            return
        if turn is None:
            error = scenario["error"] or {}
            status = int(error.get("status", 500))
            headers = {}
            if error.get("retry_after_ms") is not None:
                headers["retry-after-ms"] = str(error["retry_after_ms"])
            with srv._lock:
                srv.errors_served += 1
            self._json(status, {"error": {
                "message": str(error.get("message") or f"scripted error (HTTP {status})"),
                "type": str(error.get("type") or ("server_error" if status >= 500 else "invalid_request_error")),
                "code": error.get("code"),
            }}, headers)
            return
        calls = _tool_calls(turn, body)
        reason = "stop" if finished or not calls else "tool_calls"
        prompt_tokens = max(1, len(json.dumps(body.get("messages") or [])) // 4)
        completion_tokens = max(1, (len(turn["text"]) + sum(len(c["function"]["arguments"]) for c in calls)) // 4)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        model = str(body.get("model") or MODEL_ID)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.get("stream"):
            self._stream(cid, created, model, turn["text"], calls, reason, usage)
            return
        message: dict[str, Any] = {"role": "assistant", "content": turn["text"] or None}
        if calls:
            message["tool_calls"] = calls
        self._json(200, {"id": cid, "object": "chat.completion", "created": created, "model": model,
                         "choices": [{"index": 0, "message": message, "finish_reason": reason}],
                         "usage": usage})

    def _stream(self, cid: str, created: int, model: str, text: str, calls: list[dict[str, Any]],
                reason: str, usage: dict[str, int]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> None:
            payload: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created,
                                       "model": model, "choices": [] if delta is None else [
                                           {"index": 0, "delta": delta, "finish_reason": finish}]}
            payload.update(extra)
            self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
            self.wfile.flush()

        chunk({"role": "assistant", "content": ""})
        if text:
            half = len(text) // 2 or len(text)
            for piece in (text[:half], text[half:]):
                if piece:
                    chunk({"content": piece})
        for index, call in enumerate(calls):
            chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                   "function": {"name": call["function"]["name"], "arguments": ""}}]})
            chunk({"tool_calls": [{"index": index, "function": {"arguments": call["function"]["arguments"]}}]})
        chunk({}, reason)
        chunk(None, usage=usage)
        self._release()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beads_runner.scripted_model",
                                     description="Serve a scripted OpenAI-compatible model.")
    parser.add_argument("--script", required=True, help="the script (JSON file)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port")
    parser.add_argument("--port-file", help="write the port here once listening")
    args = parser.parse_args(argv)
    try:
        server = ScriptedModelServer(args.script, host=args.host, port=args.port)
    except ScriptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.start()
    if args.port_file:
        tmp = Path(args.port_file).with_suffix(".tmp")
        tmp.write_text(f"{server.port}\n", encoding="utf-8")
        tmp.replace(args.port_file)
    print(server.url, flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
