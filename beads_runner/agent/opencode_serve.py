"""One `opencode serve` process and its HTTP API: started on first use, restarted when found dead.

The server listens on a loopback port it chose (`--port 0`, read back from its `listening on`
line) and requires HTTP basic auth with a random password (`OPENCODE_SERVER_PASSWORD`, user
`opencode`). It runs in its own process group, recorded with `procreg`, so a runner killed with
SIGKILL leaves nothing that the next runner does not kill before it resumes. `EventStream` reads
`GET /event?directory=…` (SSE) on a thread. The sessions themselves are `opencode_server.py`'s.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import queue
import re
import secrets
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlencode

import structlog
import urllib3

from beads_runner import procreg
from beads_runner.agent.opencode import INSTALL_FIX
from beads_runner.errors import AgentUnavailable

log = structlog.get_logger("beads_runner.agent.opencode_serve")

START_TIMEOUT = 90.0  # from `opencode serve` to its "listening on" line
KILL_GRACE = 3.0
HTTP_TIMEOUT = 30.0  # one API call
STREAM_READ_TIMEOUT = 45.0  # the server sends `server.heartbeat` every 10 s: silence this long is a dead stream
TICK = 0.1
MAX_INSTANCES = 6  # worktrees the server keeps loaded; the least recently used idle ones are disposed
_LISTENING = re.compile(r"listening on (http://[^\s]+)")

# `opencode serve` runs under this watchdog, which leads its process group. The watchdog's stdin is
# a pipe whose other end only the runner holds: when the runner dies, even by SIGKILL, the pipe
# reads EOF and the watchdog ends the group. So a server never outlives its runner (procreg's
# reaping covers what a watchdog could not, on the next start). The group's SIGTERM is for opencode:
# the watchdog ignores it and leaves when opencode has.
WATCHDOG = """
import os, signal, subprocess, sys, threading, time
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
def orphaned():
    while sys.stdin.buffer.read(65536):
        pass
    os.killpg(0, signal.SIGTERM)
    time.sleep(3)
    os.killpg(0, signal.SIGKILL)
threading.Thread(target=orphaned, daemon=True).start()
code = child.wait()
sys.exit(code if code >= 0 else 128 - code)
"""


class ServerGone(Exception):
    """The server died or stopped answering during a call."""


@dataclass
class Endpoint:
    url: str
    headers: dict[str, str]
    generation: int


class OpenCodeServer:
    """One `opencode serve` process: started on first use, restarted when found dead."""

    def __init__(self, exe: str, env: dict[str, str], args: list[str]):
        self.exe = exe
        self.env = env
        self.args = args
        self.http = urllib3.PoolManager(maxsize=16, retries=False)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._endpoint: Endpoint | None = None
        self._registration: ExitStack | None = None
        self._tail: deque[str] = deque(maxlen=40)
        self.generation = 0  # starts so far: a session tells a restarted server from its own
        self.restarts = 0
        # worktree -> sessions in it now, and when it was last used (for disposing idle instances)
        self._in_use: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        atexit.register(self.stop)

    # -- the process ---------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and not procreg.exited(self._proc.pid)

    def tail(self) -> list[str]:
        return list(self._tail)

    def ensure(self) -> Endpoint:
        """The running server's endpoint; starts it (again) if it is not running."""
        with self._lock:
            if self._endpoint is not None and self.alive():
                return self._endpoint
            if self._proc is not None:
                log.warning("opencode server is gone; starting another", pid=self._proc.pid,
                            exit_code=self._proc.poll(), tail=self.tail()[-5:])
                self._stop_locked(0.0)
                self.restarts += 1
            return self._start_locked()

    def _start_locked(self) -> Endpoint:
        password = secrets.token_urlsafe(24)
        env = {**self.env, "OPENCODE_SERVER_PASSWORD": password, "OPENCODE_SERVER_USERNAME": "opencode"}
        argv = [sys.executable, "-I", "-c", WATCHDOG,
                self.exe, "serve", "--hostname", "127.0.0.1", "--port", "0", *self.args]
        try:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        except OSError as exc:
            raise AgentUnavailable(f"cannot start {self.exe} serve: {exc}", fix=INSTALL_FIX) from None
        registration = ExitStack()
        registration.enter_context(procreg.registered(proc.pid, f"agent {self.exe} serve"))
        self._proc, self._registration = proc, registration
        found: queue.Queue[str] = queue.Queue()

        def read(pipe: IO[bytes]) -> None:
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip()
                self._tail.append(line)
                match = _LISTENING.search(line)
                if match:
                    found.put(match.group(1))

        for pipe in (proc.stdout, proc.stderr):
            threading.Thread(target=read, args=(pipe,), name="opencode-serve-out", daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        url = None
        while url is None and time.monotonic() < deadline and not procreg.exited(proc.pid):
            try:
                url = found.get(timeout=TICK)
            except queue.Empty:
                continue
        if url is None:
            tail = self.tail()[-5:]
            self._stop_locked(0.0)
            raise AgentUnavailable(
                f"{self.exe} serve did not start listening within {START_TIMEOUT:g}s: {' | '.join(tail)[-300:]}",
                fix=f"run `{self.exe} serve` by hand to see why, or use agent.mode = \"run\"; {INSTALL_FIX}")
        token = base64.b64encode(f"opencode:{password}".encode()).decode()
        self.generation += 1
        self._endpoint = Endpoint(url.rstrip("/"), {"Authorization": f"Basic {token}"}, self.generation)
        self._in_use.clear()
        self._last_used.clear()
        log.info("opencode server started", pid=proc.pid, url=self._endpoint.url, generation=self.generation)
        return self._endpoint

    def stop(self, grace: float = KILL_GRACE) -> None:
        with self._lock:
            self._stop_locked(grace)

    def _stop_locked(self, grace: float) -> None:
        proc, self._proc, self._endpoint = self._proc, None, None
        if proc is not None:
            procreg.kill_group(proc, grace)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:
                    pass
        if self._registration is not None:
            self._registration.close()
            self._registration = None

    def kill_if(self, generation: int, why: str) -> None:
        """Stop the server if it is still the one of `generation` (a later one is left alone)."""
        with self._lock:
            if self._endpoint is not None and self._endpoint.generation == generation:
                log.warning("stopping the opencode server", why=why, pid=self.pid)
                self._stop_locked(KILL_GRACE)

    # -- HTTP ----------------------------------------------------------------------------------
    def call(self, endpoint: Endpoint, method: str, path: str, *, directory: str | None = None,
             body: Any = None, timeout: float = HTTP_TIMEOUT) -> tuple[int, Any]:
        """One API call: (status, parsed JSON or None). Raises ServerGone when there is no answer."""
        fields = {"directory": directory} if directory else None
        url = endpoint.url + path
        if fields:
            url += "?" + urlencode(fields)
        headers = dict(endpoint.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode("utf-8")
        try:
            response = self.http.request(method, url, body=data, headers=headers, timeout=timeout)
        except urllib3.exceptions.HTTPError as exc:
            raise ServerGone(f"{method} {path}: {exc}") from None
        try:
            parsed = json.loads(response.data) if response.data else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            parsed = response.data.decode("utf-8", errors="replace")
        return response.status, parsed

    def events(self, endpoint: Endpoint, directory: str) -> EventStream:
        return EventStream(self, endpoint, directory)

    # -- instances (one per worktree inside the server) ----------------------------------------
    def enter(self, directory: str) -> None:
        with self._lock:
            self._in_use[directory] = self._in_use.get(directory, 0) + 1
            self._last_used[directory] = time.monotonic()

    def leave(self, endpoint: Endpoint, directory: str) -> None:
        """A session in `directory` ended: dispose the least recently used idle worktrees beyond
        MAX_INSTANCES (and any that no longer exists), so a long-running server does not grow."""
        with self._lock:
            self._in_use[directory] = max(0, self._in_use.get(directory, 1) - 1)
            self._last_used[directory] = time.monotonic()
            idle = sorted((used, d) for d, used in self._last_used.items() if not self._in_use.get(d))
            gone = [d for _, d in idle if not os.path.isdir(d)]
            excess = [d for _, d in idle if d not in gone][: max(0, len(self._last_used) - len(gone) - MAX_INSTANCES)]
            for d in gone + excess:
                self._last_used.pop(d, None)
                self._in_use.pop(d, None)
        for d in gone + excess:
            try:
                self.call(endpoint, "POST", "/instance/dispose", directory=d, timeout=10.0)
            except ServerGone:
                pass


class EventStream:
    """`GET /event?directory=…` read on a thread into a queue of parsed events. The queue ends with
    a `None` when the stream ends (the server died, or `close()`)."""

    def __init__(self, server: OpenCodeServer, endpoint: Endpoint, directory: str):
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.connected = threading.Event()
        self.error = ""
        self._closed = threading.Event()
        url = f"{endpoint.url}/event?" + urlencode({"directory": directory})
        try:
            self._response = server.http.request(
                "GET", url, headers={**endpoint.headers, "Accept": "text/event-stream"}, preload_content=False,
                timeout=urllib3.Timeout(connect=10.0, read=STREAM_READ_TIMEOUT))
        except urllib3.exceptions.HTTPError as exc:
            raise ServerGone(f"GET /event: {exc}") from None
        if self._response.status != 200:
            status = self._response.status
            self._response.release_conn()
            raise ServerGone(f"GET /event answered HTTP {status}")
        self._thread = threading.Thread(target=self._read, name="opencode-events", daemon=True)
        self._thread.start()

    def _lines(self) -> Iterator[str]:
        pending = b""
        for chunk in self._response.stream(4096, decode_content=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", errors="replace").rstrip("\r")

    def _read(self) -> None:
        data: list[str] = []
        try:
            for line in self._lines():
                if line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
                elif line == "" and data:
                    try:
                        event = json.loads("\n".join(data))
                    except json.JSONDecodeError:
                        event = None
                    data = []
                    if isinstance(event, dict):
                        if event.get("type") == "server.connected":
                            self.connected.set()
                        self.queue.put(event)
        except Exception as exc:  # a reset connection, a read timeout, a closed response
            if not self._closed.is_set():
                self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.queue.put(None)

    def close(self) -> None:
        self._closed.set()
        try:
            self._response.shutdown()  # wakes the reader blocked in a read
        except Exception:
            pass
        self._thread.join(5.0)
        self._response.release_conn()
