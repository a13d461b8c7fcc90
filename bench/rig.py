"""What every benchmark sets up and reads: a repository with a backlog, the daemon as a real process,
the latency-bound `command` agent's stamps, and the engine's own record of the runs."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from beads_runner.gitcmd import run_git

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BEADS_RUNNER = Path(PY).parent / "beads-runner"
OPENCODE = ROOT / "node_modules" / ".bin" / "opencode"
RESULTS = ROOT / "bench" / "RESULTS.md"

# The `command` agent: stamps its start and end (time.time()) outside the repository, sleeps a fixed
# time (a latency-bound agent), writes one file of its own.
AGENT_SCRIPT = textwrap.dedent("""\
    import os, sys, time
    t0 = time.time()
    stamps, issue = os.environ["BENCH_STAMPS"], os.environ["BEADS_ISSUE_ID"]
    with open(os.path.join(stamps, issue + ".start"), "a") as fh:
        fh.write(repr(t0) + "\\n")
    sys.stdin.read()
    time.sleep(float(os.environ.get("BENCH_AGENT_SLEEP", "0")))
    os.makedirs("work", exist_ok=True)
    with open(os.path.join("work", issue + ".txt"), "w") as fh:
        fh.write(issue + "\\n")
    print("wrote work/" + issue + ".txt")
    with open(os.path.join(stamps, issue + ".end"), "a") as fh:
        fh.write(repr(time.time()) + "\\n")
""")


def git(repo: Path, *args: str) -> str:
    """git's stdout in `repo` (the runner's own git runner); RuntimeError with git's words on a failure."""
    result = run_git(args, cwd=repo)
    if not result.ok:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {result.message()}")
    return result.text().strip()


def toml_str(value: str) -> str:
    return json.dumps(value)  # a TOML basic string for anything a path holds here


def make_repo(path: Path, *, tracker: str = "jsonl", agent: str = "command", agent_script: Path | None = None,
              stamps: Path | None = None, agent_sleep: float = 0.0, gate: bool = False,
              max_sessions: int = 3) -> Path:
    """A git repository with a tiny package, a beads store (jsonl file or bd stand-in) and a
    `.beads-runner.toml` that leaves everything else at its default (poll_interval 5 s...)."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Bench")
    git(path, "config", "user.email", "bench@example.com")
    (path / "pkg").mkdir()
    (path / "pkg" / "__init__.py").write_text("")
    (path / ".gitignore").write_text(".beads-runner/\n__pycache__/\n")
    if tracker == "bd":
        from tests.fakes.bd_standin import make_beads_repo

        make_beads_repo(path, prefix="bx")
    else:
        (path / ".beads").mkdir()
        (path / ".beads" / "issues.jsonl").write_text("")
    lines = ["[tracker]", f"kind = {toml_str(tracker)}", "", "[agent]"]
    if agent == "command":
        assert agent_script is not None and stamps is not None
        lines += ['kind = "command"', f"command = {toml_str(shlex.join([PY, '-S', str(agent_script)]))}",
                  f"env = {{ BENCH_STAMPS = {toml_str(str(stamps))}, "
                  f"BENCH_AGENT_SLEEP = {toml_str(str(agent_sleep))} }}",
                  f"writable = [{toml_str(str(stamps))}]"]  # its stamps, in the sandbox
    else:
        lines += ['kind = "opencode"', f"command = {toml_str(str(OPENCODE))}", 'model = "scripted/scripted"',
                  'timeout = "5m"', 'stall_timeout = "2m"']
    lines += ["", "[engine]", f"max_sessions = {max_sessions}", ""]
    if gate:
        lines += ["[[gates]]", 'name = "check"', f"run = {toml_str(shlex.join([PY, '-S', '-c', 'pass']))}",
                  'timeout = "1m"', ""]
    (path / ".beads-runner.toml").write_text("\n".join(lines))
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


class Issues:
    """Creating and closing issues from outside the runner, as a person or another tool would."""

    def __init__(self, repo: Path, kind: str):
        self.repo, self.kind = repo, kind

    def create(self, issue_id: str, title: str, deps: Sequence[str] = (), actor: str = "bench") -> float:
        """Create an open issue; returns time.time() just after the store holds it."""
        if self.kind == "bd":
            from tests.fakes.bd_standin import run_bd

            flags = ["--id", issue_id] + (["--deps", ",".join(deps)] if deps else [])
            run_bd(self.repo, "create", title, *flags, "--silent", actor=actor)
        else:
            from beads_runner.tracker.jsonl import JsonlTracker

            JsonlTracker(self.repo, actor=actor).create(title, deps=list(deps), id=issue_id)
        return time.time()

    def claim_as(self, issue_id: str, actor: str) -> None:
        if self.kind == "bd":
            from tests.fakes.bd_standin import run_bd

            run_bd(self.repo, "update", issue_id, "--claim", actor=actor)
        else:
            from beads_runner.tracker.jsonl import JsonlTracker

            JsonlTracker(self.repo, actor=actor).claim(issue_id)

    def close_as(self, issue_id: str, actor: str) -> float:
        if self.kind == "bd":
            from tests.fakes.bd_standin import run_bd

            run_bd(self.repo, "close", issue_id, "--reason", "done by hand", actor=actor)
        else:
            from beads_runner.tracker.jsonl import JsonlTracker

            JsonlTracker(self.repo, actor=actor).close(issue_id, "done by hand")
        return time.time()


def tracker_env(kind: str, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{Path(PY).parent}{os.pathsep}{env.get('PATH', '')}"
    if kind == "bd":
        from tests.fakes.bd_standin import standin_env

        env = standin_env(env)
    return env


# --- the daemon as a real process --------------------------------------------------------------
class Daemon:
    def __init__(self, repo: Path, env: dict[str, str], log: Path, once: bool = False):
        self.repo, self.env, self.log, self.once = repo, env, log, once
        self.proc: subprocess.Popen[bytes] | None = None
        self.t_spawn = self.t_exit = 0.0

    def start(self) -> Daemon:
        argv = [str(BEADS_RUNNER), "--repo", str(self.repo), "start", *(["--once"] if self.once else [])]
        self._fh = open(self.log, "wb")  # noqa: SIM115 - closed in wait()
        self.t_spawn = time.time()
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self._fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        return self

    def wait_started(self, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if runner_started(self.repo, self.proc.pid):
                return time.time()
            if self.proc.poll() is not None:
                raise RuntimeError(f"beads-runner exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"beads-runner did not start in {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self, timeout: float = 1800) -> int:
        code = self.proc.wait(timeout=timeout)
        self.t_exit = time.time()
        self._fh.close()
        return code


def runner_started(repo: Path, pid: int) -> bool:
    """Has the runner with this pid said "runner started" in the repository's structured log
    (.beads-runner/logs/runner.jsonl: one JSON record per line)? Read as records, never as text."""
    from beads_runner.logs import LOG_FILE

    path = repo / ".beads-runner" / "logs" / LOG_FILE
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return False
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if record.get("event") == "runner started" and record.get("pid") == pid:
            return True
    return False


def wait_for(predicate, timeout: float, what: str, tick: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(tick)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def read_stamps(stamps: Path, issue_id: str, kind: str = "start") -> list[float]:
    try:
        return [float(x) for x in (stamps / f"{issue_id}.{kind}").read_text().split()]
    except (OSError, ValueError):
        return []


# --- the engine's own record ---------------------------------------------------------------------
def read_runs(repo: Path) -> dict[str, dict[str, Any]]:
    """Per issue (its latest run): created/finished, every step's last attempt, events that matter.
    Read through the embedded engine (the owner of state.db), as `status` reads it."""
    from workflows.local import LocalEngine
    from workflows.task_flow import TASK_FLOW

    engine = LocalEngine(repo / ".beads-runner" / "state.db", TASK_FLOW)
    out: dict[str, dict[str, Any]] = {}
    for run in sorted(engine.runs(limit=1_000_000), key=lambda r: r.created_at):
        info: dict[str, Any] = {"run_id": run.id, "status": run.status, "created": run.created_at,
                                "finished": run.finished_at, "steps": {}, "retries": 0}
        for a in engine.attempts(run.id):
            step = info["steps"].setdefault(a["step"], {"first_start": a["started_at"]})
            step.update(start=a["started_at"], end=a["finished_at"], status=a["status"], notes=a["notes"])
            if a["attempt"] > 1:
                info["retries"] += 1
        for s in run.steps:
            if s.output and s.name in info["steps"]:
                info["steps"][s.name]["output"] = s.output
        for e in engine.events(run.id):
            if e["event"] == "landed":
                info["landed"] = e["ts"]
            elif e["event"] == "session starting":
                info["session_starting"] = e["ts"]
            elif e["event"] == "gates already passed on this exact tree":
                info["verify_cached"] = True
            elif e["event"] == "session finished":
                info["session_finished"] = e["ts"]
                info["session_duration"] = e.get("duration_s")
        out[run.key] = info
    engine.close()
    return out


def _report_seconds(report: dict[str, Any] | None) -> float:
    return sum(float(r.get("duration_s") or 0) for r in (report or {}).get("reports", []))


def gate_seconds(run: dict[str, Any]) -> dict[str, float]:
    """Seconds of gates in a run: in the process step (the runner gates the session's result in the
    fix loop, inside the session slot), in verify (only when the tree changed since), and again in
    commit when landing rebased the branch. The last is not timed separately by the runner, so it is
    estimated as the gates' own durations from the same run's report."""
    steps = run["steps"]
    proc_report = (steps.get("process", {}).get("output") or {}).get("gate_report")
    in_process = _report_seconds(proc_report)
    verify = steps.get("verify", {})
    verify_s = 0.0 if run.get("verify_cached") else max((verify.get("end") or 0) - (verify.get("start") or 0), 0.0)
    report = proc_report or ((verify.get("output") or {}).get("report"))
    rebased = bool((steps.get("commit", {}).get("output") or {}).get("rebased"))
    regate = _report_seconds(report) if rebased else 0.0
    return {"process": in_process, "verify": verify_s, "regate": regate, "total": in_process + verify_s + regate}
