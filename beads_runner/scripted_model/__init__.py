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
- `outage` (top level): `{"status": 429, "message": ..., "code": "insufficient_quota", "seconds": N}`
  answers EVERY chat request with that error for N seconds from the first chat request (or from
  `start_outage()`), with no retry-after header unless `retry_after_ms` is given: a provider whose
  quota is spent, as OpenAI answers it. After N seconds the scenarios answer again.
- Every answer is logged in `answers` (time, HTTP status, scenario), and with `answer_log=PATH`
  (or `--answer-log`) appended to that file as JSON lines, so a test can count what the provider
  was asked while it was down.
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

import json
import os
import threading
import time
from collections.abc import Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from beads_runner.scripted_model.http import _Handler
from beads_runner.scripted_model.script import MODEL_ID, ScriptError, content_text, load_script

__all__ = ["MODEL_ID", "ScriptError", "ScriptedModelServer", "load_script"]


class ScriptedModelServer:
    """A threaded HTTP server answering `/v1/chat/completions` from a script. A context manager."""

    def __init__(self, script: Mapping[str, Any] | str | os.PathLike[str], *, host: str = "127.0.0.1",
                 port: int = 0, keep_requests: int = 200, answer_log: str | os.PathLike[str] | None = None):
        self.script = load_script(script)
        self.answer_log = Path(answer_log) if answer_log else None
        self.outage_started: float | None = None
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
            self.answers: list[dict[str, Any]] = []  # {"t", "status", "scenario"} per chat answer

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

    # -- the outage -----------------------------------------------------------------------------
    def start_outage(self, now: float | None = None) -> None:
        """Start the script's outage now (otherwise it starts at the first chat request)."""
        with self._lock:
            self.outage_started = time.time() if now is None else now

    def outage_error(self, now: float | None = None) -> dict[str, Any] | None:
        """The outage's error if it is on now (starting it at the first call)."""
        outage = self.script.get("outage")
        if outage is None:
            return None
        now = time.time() if now is None else now
        with self._lock:
            if self.outage_started is None:
                self.outage_started = now
            on = now - self.outage_started < float(outage["seconds"])
        return outage if on else None

    def record_answer(self, status: int, scenario: str) -> None:
        entry = {"t": time.time(), "status": status, "scenario": scenario}
        with self._lock:
            self.answers.append(entry)
            del self.answers[:-10_000]
            if self.answer_log is not None:
                with self.answer_log.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(entry) + "\n")

    # -- answering ---------------------------------------------------------------------------
    def choose(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
        """(scenario, turn, finished) for a request body; turn None means: answer with the error."""
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        first = content_text(messages[users[0]].get("content")) if users else ""
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
