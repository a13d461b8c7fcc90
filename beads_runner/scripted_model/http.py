"""The HTTP side of the scripted model: `/v1/models` and `/v1/chat/completions`, streamed as
OpenAI-compatible server-sent events, tool calls made absolute against opencode's working directory."""

from __future__ import annotations

import json
import os
import posixpath
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from beads_runner.scripted_model.script import _WORKDIR, MODEL_ID, content_text

if TYPE_CHECKING:
    from beads_runner.scripted_model import ScriptedModelServer


def _workdir(body: Mapping[str, Any]) -> str | None:
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "system":
            found = _WORKDIR.search(content_text(message.get("content")))
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
        outage = srv.outage_error()
        if outage is not None:
            self._error(srv, outage, "outage")
            return
        scenario, turn, finished = srv.choose(body)
        if scenario["hang"] or (turn is not None and turn.get("hang")):
            srv._stopping.wait()
            self.close_connection = True
            return
        if scenario["delay"] > 0 and srv._stopping.wait(scenario["delay"]):
            return
        if turn is None:
            self._error(srv, scenario["error"] or {}, scenario["name"])
            return
        srv.record_answer(200, scenario["name"])
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

    def _error(self, srv: ScriptedModelServer, error: Mapping[str, Any], scenario: str) -> None:
        status = int(error.get("status", 500))
        headers = {}
        if error.get("retry_after_ms") is not None:
            headers["retry-after-ms"] = str(error["retry_after_ms"])
        with srv._lock:
            srv.errors_served += 1
        srv.record_answer(status, scenario)
        self._json(status, {"error": {
            "message": str(error.get("message") or f"scripted error (HTTP {status})"),
            "type": str(error.get("type") or ("server_error" if status >= 500 else "invalid_request_error")),
            "code": error.get("code"),
        }}, headers)

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
