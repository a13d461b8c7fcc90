"""A real Hatchet engine for the end-to-end tests: `beads-runner hatchet up`, once per test session.

Each test gets its own repository and its own namespace on that engine, so runs of one test never
reach the workers of another."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from beads_runner.hatchet_local import read_client_env
from tests.realtools import TOOLS_BIN, require_tool

BEADS_RUNNER = Path(sys.executable).parent / "beads-runner"


class Engine:
    def __init__(self, home: Path, proc: subprocess.Popen, client: dict[str, str]):
        self.home = home
        self.proc = proc
        self.client = client

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(self.client)
        return env


def start_engine(home: Path, timeout: float = 240.0) -> Engine:
    for name in ("hatchet-lite", "hatchet-migrate", "hatchet-admin"):
        require_tool(TOOLS_BIN / name, "the Hatchet engine: run `make tools` (needs Go >= 1.26)")
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(home)], check=True)
    log = open(home / "up.log", "ab")  # noqa: SIM115
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHET_CLIENT_")}
    proc = subprocess.Popen([str(BEADS_RUNNER), "--repo", str(home), "hatchet", "up"], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    log.close()
    client_env = home / ".beads-runner" / "hatchet" / "client.env"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hatchet up exited {proc.returncode}:\n{(home / 'up.log').read_text()[-3000:]}")
        status = subprocess.run([str(BEADS_RUNNER), "--repo", str(home), "hatchet", "status"], capture_output=True,
                                text=True, env=env)
        if status.returncode == 0 and client_env.exists():
            return Engine(home, proc, read_client_env(client_env))
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"hatchet up not ready in {timeout}s:\n{(home / 'up.log').read_text()[-3000:]}")


def stop_engine(engine: Engine) -> None:
    if engine.proc.poll() is None:
        engine.proc.send_signal(signal.SIGTERM)
        try:
            engine.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(engine.proc.pid, signal.SIGKILL)
            engine.proc.wait()


@pytest.fixture(scope="session")
def hatchet_engine() -> Iterator[Engine]:
    # PostgreSQL runs as the `postgres` user when we are root: its data must be reachable by it,
    # which pytest's private temporary directories are not.
    home = Path(tempfile.mkdtemp(prefix="beads-runner-hatchet-", dir="/tmp"))
    os.chmod(home, 0o755)
    engine = start_engine(home / "engine")
    try:
        yield engine
    finally:
        stop_engine(engine)
        shutil.rmtree(home, ignore_errors=True)


def use_hatchet(repo: Path, *, extra: str = "") -> str:
    """Switch a sample repository to the Hatchet engine under a namespace of its own; commit it."""
    namespace = "t" + uuid.uuid4().hex[:10]
    config = repo / ".beads-runner.toml"
    text = config.read_text()
    block = textwrap.dedent(f"""\

        [engine.hatchet]
        namespace = "{namespace}"
        """)
    if "[engine]\n" in text:
        text = re.sub(r'\[engine\]\n(kind = "\w+".*\n)?', '[engine]\nkind = "hatchet"\n', text, count=1)
    else:
        text += '\n[engine]\nkind = "hatchet"\n'
    config.write_text(text + block + extra)
    subprocess.run(["git", "commit", "-q", "-am", "Run on Hatchet"], cwd=repo, check=True)
    return namespace


class Workers:
    """`beads-runner worker` processes on one repository."""

    def __init__(self, repo: Path, env: dict[str, str]):
        self.repo = repo
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> subprocess.Popen:
        log = open(self.repo.parent / f"worker-{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([str(BEADS_RUNNER), "--repo", str(self.repo), "worker", "--name", name],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.repo.parent / f"worker-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with _suppress():
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with _suppress():
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError | PermissionError)


def session_log_wrapper(path: Path, log: Path, opencode: Path) -> Path:
    """An agent command that records when each session starts and ends, then runs opencode: the
    agents' own account of how many ran at once, whatever engine scheduled them."""
    path.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, subprocess, sys, time, uuid
        token = uuid.uuid4().hex  # not the pid: each sandboxed session has a pid namespace of its own
        def note(kind, **extra):
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps({{"kind": kind, "t": time.time(), "pid": token, "cwd": os.getcwd(),
                                    **extra}}) + "\\n")
        note("start")
        try:
            rc = subprocess.call([{str(opencode)!r}, *sys.argv[1:]])
        finally:
            note("end")
        sys.exit(rc)
        """))
    path.chmod(0o755)
    return path


def session_intervals_from(log: Path) -> list[tuple[float, float, str]]:
    starts: dict[str, tuple[float, str]] = {}
    out = []
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "start":
            starts[rec["pid"]] = (rec["t"], rec["cwd"])
        elif rec["pid"] in starts:
            t0, cwd = starts.pop(rec["pid"])
            out.append((t0, rec["t"], cwd))
    return out
