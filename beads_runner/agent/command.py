"""The `command` agent: any CLI that reads the prompt on stdin and edits files in its cwd.

`agent.command` is split like a shell would (no shell runs it), `agent.args` are appended. The
process runs in the worktree with `BEADS_ISSUE_ID` and `BEADS_RUNNER_WORKDIR` set (plus
`agent.env`). ok = exit 0 within the limits; the summary is its last few non-empty stdout lines.
A stall is no output line, on stdout or stderr, for `agent.stall_timeout`.
"""

from __future__ import annotations

import os
import shlex
import threading
from collections import deque
from pathlib import Path
from typing import IO

from beads_runner import executables
from beads_runner.agent.base import EventCallback, SessionRequest, SessionResult
from beads_runner.agent.ending import supervisor_ending
from beads_runner.agent.process import run_supervised
from beads_runner.config import AgentConfig
from beads_runner.errors import AgentUnavailable
from beads_runner.limits import classify

SUMMARY_LINES = 5
FIX = ('set agent.command in .beads-runner.toml to a command that reads the prompt on stdin '
       '(for example command = "my-agent --yes"), and make sure it is installed')


class CommandAgent:
    def __init__(self, config: AgentConfig, repo_root: Path):
        self.config = config
        self.repo_root = Path(repo_root)
        self.model = config.model
        try:
            argv0 = self._split()[0]
        except AgentUnavailable:  # reported by run() and resolve_executable(), with the fix
            argv0 = ""
        self.name = os.path.basename(argv0) or "command"

    def _split(self) -> list[str]:
        command = self.config.command or ""
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise AgentUnavailable(f"agent.command {command!r} does not split like a shell line: {exc}",
                                   fix=FIX) from None
        if not argv:
            raise AgentUnavailable("agent.command is required when agent.kind = \"command\"", fix=FIX)
        return argv

    def resolve_executable(self) -> str:
        exe = self._split()[0]
        found = executables.find(exe, self.repo_root)
        path = executables.as_path(exe, self.repo_root)
        if found is None and path is not None:
            raise AgentUnavailable(f"agent.command: {path} is not an executable file", fix=FIX)
        if found is None:
            raise AgentUnavailable(f"agent.command: {exe!r} is not on PATH", fix=FIX)
        return os.path.abspath(found)

    def argv(self) -> list[str]:
        return [self.resolve_executable(), *self._split()[1:], *self.config.args]

    def run(self, request: SessionRequest, *, cancel: threading.Event | None = None,
            on_event: EventCallback | None = None) -> SessionResult:
        argv = self.argv()
        env = dict(os.environ)
        env["BEADS_ISSUE_ID"] = request.issue_id
        env["BEADS_RUNNER_WORKDIR"] = str(request.workdir)
        if request.session_id:
            env["BEADS_SESSION_ID"] = request.session_id
        env.update(self.config.env)
        last_lines: deque[str] = deque(maxlen=SUMMARY_LINES)
        log: IO[str] | None = None
        if request.log_path is not None:
            request.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(request.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below

        def on_line(stream: str):
            def handle(line: str) -> None:
                if stream == "stdout":
                    if line.strip():
                        last_lines.append(line.rstrip())
                    if log is not None:
                        log.write(line + "\n")
                        log.flush()
                if on_event is not None:
                    on_event({"type": "output", "stream": stream, "text": line})
            return handle

        try:
            outcome = run_supervised(
                argv, cwd=request.workdir, env=env, stdin_text=request.prompt,
                timeout=self.config.timeout, stall_timeout=self.config.stall_timeout, cancel=cancel,
                on_stdout=on_line("stdout"), on_stderr=on_line("stderr"), stall_on_stderr=True,
                writable=[self.repo_root / Path(p).expanduser() for p in self.config.writable],
            )
        except OSError as exc:
            raise AgentUnavailable(f"cannot start {argv[0]}: {exc}", fix=FIX) from None
        finally:
            if log is not None:
                log.close()

        ok, reason, retryable = outcome.exit_code == 0, "", True
        ending = supervisor_ending(timed_out=outcome.timed_out, stalled=outcome.stalled, cancelled=outcome.cancelled,
                                   timeout=self.config.timeout, stall_timeout=self.config.stall_timeout,
                                   silent=f"output from {self.name}", ended="killed")
        if ending is not None:
            ok, reason, retryable = False, ending.reason, ending.retryable
        elif outcome.exit_code != 0:
            code = outcome.exit_code
            reason = (f"{self.name} was killed by signal {-code}" if code is not None and code < 0
                      else f"{self.name} exited {code}")
            last = next((line.strip() for line in reversed(outcome.stderr_tail) if line.strip()), "")
            if last:
                reason = f"{reason}: {last[:200]}"
        limit = None
        if not ok and not outcome.killed:
            # A provider's quota or refused credentials, in the agent's own last words.
            for line in reversed(outcome.stderr_tail[-5:]):
                found = classify(line)
                if found is not None and found.parks:
                    limit = {"kind": found.kind, "message": found.message, "reset_at": found.reset_at}
                    break
        tail = list(outcome.output_tail) + outcome.callback_errors
        if not ok:
            tail.append(f"beads-runner: {reason}")
        return SessionResult(
            ok=ok, reason=reason, retryable=retryable, exit_code=outcome.exit_code,
            session_id=request.session_id, summary="\n".join(last_lines),
            duration_s=round(outcome.duration_s, 3), events=outcome.stdout_lines,
            timed_out=outcome.timed_out, stalled=outcome.stalled, cancelled=outcome.cancelled,
            output_tail="\n".join(tail), limit=limit,
        )
