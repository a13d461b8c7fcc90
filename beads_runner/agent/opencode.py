"""The `opencode` agent: one `opencode run --format json` process per session.

argv: `opencode run --format json --dir <worktree> --title <title> [--model p/m] [--session id]
[agent.args...]`, the prompt on stdin (then closed). Success needs exit 0, no `error` event and a
last `step_finish` with reason "stop" (see `events.py`).

Environment: the runner's own, plus `OPENCODE_PERMISSION` setting every permission class to allow
or deny (never ask; nothing outside the worktree; see `permissions.py`), the user's own keys winning,
plus `OPENCODE_DISABLE_AUTOUPDATE=1` unless set, plus `agent.env`, which wins over everything; then
`OPENCODE_CONFIG_CONTENT` gets `"snapshot": false` unless it sets `snapshot` itself (see
`HEADLESS_CONFIG`).

Note (opencode 1.18.33): several sessions starting at once on a data directory that has never
been used race on its database migration, and some exit 1 at once ("Failed query: CREATE TABLE");
that is reported as retryable. A data directory that has run one session is safe to share.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import IO

import beads_runner
from beads_runner import executables
from beads_runner.agent.base import EventCallback, SessionRequest, SessionResult
from beads_runner.agent.ending import Ending, limit_ending, supervisor_ending
from beads_runner.agent.events import SessionEvents
from beads_runner.agent.opencode_log import OpencodeLogWatch, log_dir
from beads_runner.agent.permissions import HEADLESS_PERMISSION, asked_permission, permission_json, refused_permission
from beads_runner.limits import classify
from beads_runner.agent.process import run_supervised
from beads_runner.config import AgentConfig
from beads_runner.errors import AgentUnavailable

OPENCODE_VERSION = "1.18.33"
DEFAULT_PERMISSION = HEADLESS_PERMISSION
INSTALL_FIX = (f"run `make setup` in the beads-runner checkout, or `npm install opencode-ai@{OPENCODE_VERSION}`, "
               "or set agent.command in .beads-runner.toml")
TITLE_MAX = 100
# opencode config the runner adds to OPENCODE_CONFIG_CONTENT where the user's has no such key.
# `snapshot`: opencode's own git snapshot of the worktree (a `git init` and eight `git config`s per
# new worktree, a `git add` + `write-tree` of the whole worktree at every step, a diff summary per
# message). It serves opencode's undo/revert and the `patch` parts, which the runner uses neither
# of: it has the worktree and makes its own commit. Measured (bench/RESULTS.md): server-mode CPU
# per session 0.42 -> 0.24 s in a worktree seen before, and the `git add` grows with the worktree.
HEADLESS_CONFIG: dict[str, object] = {"snapshot": False}


def _checkout_opencode() -> Path:
    """`node_modules/.bin/opencode` of the beads-runner checkout this package runs from."""
    return Path(beads_runner.__file__).resolve().parents[1] / "node_modules" / ".bin" / "opencode"


def headless_config(user_value: str | None) -> str:
    """OPENCODE_CONFIG_CONTENT: the user's JSON object with HEADLESS_CONFIG's keys added where it
    has none (so `"snapshot": true` there keeps snapshots). opencode reads this after the global and
    project opencode.json, so it wins over them. A value that is not a plain JSON object (opencode
    also takes JSONC, with comments) is passed on untouched: its own parser reports any error."""
    if not user_value or not user_value.strip():
        return json.dumps(HEADLESS_CONFIG)
    try:
        config = json.loads(user_value)
    except json.JSONDecodeError:
        return user_value
    if not isinstance(config, dict):
        return user_value
    return json.dumps({**HEADLESS_CONFIG, **config})


class OpenCodeAgent:
    name = "opencode"

    def __init__(self, config: AgentConfig, repo_root: Path):
        self.config = config
        self.repo_root = Path(repo_root)
        self.model = config.model

    # -- the executable ------------------------------------------------------------------------
    def resolve_executable(self) -> str:
        """agent.command, else `opencode` on PATH, else <repo>/node_modules/.bin/opencode, else the
        beads-runner checkout's node_modules/.bin/opencode."""
        command = self.config.command
        if command:
            found = executables.find(command, self.repo_root)
            path = executables.as_path(command, self.repo_root)
            if found is None and path is not None:
                raise AgentUnavailable(f"agent.command {command!r}: {path} is not an executable file",
                                       fix=f"correct agent.command, or {INSTALL_FIX}")
            if found:
                return os.path.abspath(found)
            raise AgentUnavailable(f"agent.command {command!r} is not on PATH",
                                   fix=f"correct agent.command, or {INSTALL_FIX}")
        found = executables.find("opencode", self.repo_root)
        if found:
            return os.path.abspath(found)
        for candidate in (self.repo_root / "node_modules" / ".bin" / "opencode", _checkout_opencode()):
            if executables.is_executable_file(candidate):
                return os.path.abspath(candidate)
        raise AgentUnavailable("opencode was not found (not on PATH, not in node_modules/.bin)", fix=INSTALL_FIX)

    def version(self, timeout: float = 60.0) -> str:
        """`opencode --version`, for `doctor`. Raises AgentUnavailable if it does not answer."""
        exe = self.resolve_executable()
        try:
            proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, env=self._env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AgentUnavailable(f"{exe} --version failed: {exc}", fix=INSTALL_FIX) from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise AgentUnavailable(f"{exe} --version exited {proc.returncode}: {tail[0]}", fix=INSTALL_FIX)
        return proc.stdout.strip()

    # -- one session ---------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("OPENCODE_DISABLE_AUTOUPDATE", "1")
        env.update(self.config.env)
        env["OPENCODE_PERMISSION"] = permission_json(env.get("OPENCODE_PERMISSION"))
        env["OPENCODE_CONFIG_CONTENT"] = headless_config(env.get("OPENCODE_CONFIG_CONTENT"))
        return env

    def argv(self, exe: str, request: SessionRequest) -> list[str]:
        title = " ".join((request.title or request.issue_id).split())[:TITLE_MAX] or request.issue_id
        argv = [exe, "run", "--format", "json", "--dir", str(request.workdir), "--title", title]
        if self.config.model:
            argv += ["--model", self.config.model]
        if request.session_id:
            argv += ["--session", request.session_id]
        return argv + list(self.config.args)

    def _data_key(self) -> str:
        """opencode's database file for this environment (the thing concurrent first starts race on)."""
        env = self._env()
        if env.get("OPENCODE_DB"):
            return env["OPENCODE_DB"]
        data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return str(Path(data) / "opencode" / "opencode.db")

    def writable_dirs(self) -> list[Path]:
        """What opencode writes besides the worktree (its database, logs, snapshots, caches), so the
        sandbox lets it; plus agent.writable."""
        env = self._env()
        home = Path(env.get("HOME") or Path.home())
        dirs = [Path(env.get(var) or home / default) / "opencode" for var, default in (
            ("XDG_DATA_HOME", ".local/share"), ("XDG_CACHE_HOME", ".cache"), ("XDG_STATE_HOME", ".local/state"),
            ("XDG_CONFIG_HOME", ".config"))]  # opencode writes there too (a .gitignore, its plugins)
        if env.get("OPENCODE_DB"):
            dirs.append(Path(env["OPENCODE_DB"]).parent)
        return dirs + [self.repo_root / Path(p).expanduser() for p in self.config.writable]

    def run(self, request: SessionRequest, *, cancel: threading.Event | None = None,
            on_event: EventCallback | None = None) -> SessionResult:
        exe = self.resolve_executable()
        argv = self.argv(exe, request)
        events = SessionEvents()
        log: IO[str] | None = None
        if request.log_path is not None:
            request.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(request.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below

        first_start = _FirstStart.enter(self._data_key())
        # Stopped by the caller's cancel, or by us when a permission refuses a tool call.
        stop = threading.Event()
        refused: list[str] = []
        finished = threading.Event()
        if cancel is not None:
            threading.Thread(target=_relay, args=(cancel, stop, finished), daemon=True).start()
        # opencode retries a provider's quota and credential errors silently: its log says them.
        watch = OpencodeLogWatch(log_dir(self._env(), Path.home()), request.workdir)
        limit_seen: list = []

        def look_for_limits() -> None:
            while not stop.is_set() and not finished.is_set():
                found = watch.poll()
                if found is not None:
                    limit_seen.append(found)
                    stop.set()  # the session cannot get anywhere: end it now
                    return
                stop.wait(self.config.limit_check_interval)

        watcher = threading.Thread(target=look_for_limits, name="opencode-limits", daemon=True)
        watcher.start()

        def on_stdout(line: str) -> None:
            first_start.done()  # opencode answered: its database exists, others may start
            if log is not None:
                log.write(line + "\n")
                log.flush()
            event = events.feed(line)
            if event is not None and not refused and (why := refused_permission(event)):
                refused.append(why)  # a headless session cannot be granted it: end here, do not retry
                stop.set()
            if event is not None and on_event is not None:
                on_event(event)

        try:
            outcome = run_supervised(
                argv, cwd=request.workdir, env=self._env(), stdin_text=request.prompt,
                timeout=self.config.timeout, stall_timeout=self.config.stall_timeout, cancel=stop,
                on_stdout=on_stdout, stall_on_stderr=False, writable=self.writable_dirs(),
            )
        except OSError as exc:
            raise AgentUnavailable(f"cannot start {exe}: {exc}", fix=INSTALL_FIX) from None
        finally:
            finished.set()
            first_start.done()
            watcher.join(timeout=5)
            if log is not None:
                log.close()

        verdict = events.verdict(outcome.exit_code)
        ok, reason, retryable = verdict.ok, verdict.reason, verdict.retryable
        if not ok and not limit_seen and not refused and not (cancel is not None and cancel.is_set()):
            # A session that failed (or stalled) may have been held by a limit logged in its last
            # moments, or named in its error event (a 401: opencode gives up and says so).
            late = watch.poll()
            if late is None and events.error is not None:
                late = classify(events.error.message)
            if late is not None and late.parks:
                limit_seen.append(late)
        ending = None
        if limit_seen:
            # The provider's limit is the cause, whatever ended the session (us, or the stall timeout
            # while opencode retried silently): not the issue's failure.
            ending = limit_ending(limit_seen[0])
        elif refused and not (outcome.timed_out or outcome.stalled):
            asked = asked_permission(list(outcome.stderr_tail))
            permission = refused[0] if asked is None or refused[0].startswith(asked) else f"{asked}: {refused[0]}"
            ending = Ending(f"a permission refused a tool call: {permission}; the session was ended (a headless "
                            "session is never granted a permission, so a retry would only repeat it)", False)
        else:
            ending = supervisor_ending(timed_out=outcome.timed_out, stalled=outcome.stalled,
                                       cancelled=outcome.cancelled, timeout=self.config.timeout,
                                       stall_timeout=self.config.stall_timeout, silent="output from opencode",
                                       ended="killed")
        if ending is not None:
            ok, reason, retryable = False, ending.reason, ending.retryable
        if not ok and reason.startswith("opencode exited") and outcome.stderr_tail:
            lines = [line.strip() for line in outcome.stderr_tail if line.strip()]
            last = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
            if last:
                reason = f"{reason}: {last[:200]}"

        tail = list(outcome.stderr_tail)
        if events.error is not None:
            tail.append(f"error event: {events.error.name}: {events.error.message}")
        for tool in events.failed_tools[-5:]:
            tail.append(f"tool {tool.tool} failed: {tool.error}")
        tail += outcome.callback_errors
        if not ok:
            tail.append(f"beads-runner: {reason}")
        return SessionResult(
            ok=ok, reason=reason, retryable=retryable, exit_code=outcome.exit_code,
            session_id=events.session_id or request.session_id, summary=events.summary,
            tokens=events.tokens, cost=events.cost, duration_s=round(outcome.duration_s, 3),
            events=events.events, timed_out=outcome.timed_out, stalled=outcome.stalled and not limit_seen,
            cancelled=outcome.cancelled and not refused and not limit_seen, output_tail="\n".join(tail),
            limit=({"kind": limit_seen[0].kind, "message": limit_seen[0].message, "reset_at": limit_seen[0].reset_at}
                   if limit_seen else None),
        )


def _relay(source: threading.Event, target: threading.Event, finished: threading.Event) -> None:
    """Set `target` when `source` is set, until `finished`."""
    while not finished.is_set():
        if source.wait(0.1):
            target.set()
            return


class _FirstStart:
    """opencode 1.18.33 creates its database on first start, and several processes doing that at
    once race ("Failed query: CREATE TABLE `workspace`", exit 1). So the first session of this
    process per data directory starts alone; the others wait until it has printed its first event
    (the database exists by then) or ended, at most `WAIT` seconds."""

    WAIT = 60.0
    _lock = threading.Lock()
    _ready: dict[str, threading.Event] = {}

    def __init__(self, event: threading.Event, first: bool):
        self._event = event
        self._first = first

    @classmethod
    def enter(cls, key: str) -> _FirstStart:
        with cls._lock:
            event = cls._ready.get(key)
            if event is None:
                event = cls._ready[key] = threading.Event()
                if Path(key).exists():  # created by an earlier run: nothing to race on
                    event.set()
                    return cls(event, first=False)
                return cls(event, first=True)
        event.wait(cls.WAIT)
        return cls(event, first=False)

    def done(self) -> None:
        if self._first and not self._event.is_set():
            self._event.set()
