"""The demo on a local Hatchet engine (`beads-runner demo --engine hatchet`): `hatchet up`, two
`beads-runner worker` processes and `start --once`, all real processes, stopped together."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from beads_runner.config import STATE_DIR
from beads_runner.errors import RunnerError


ENGINE_READY_TIMEOUT = 300.0  # a first `up` creates a PostgreSQL cluster and migrates it
WORKERS = ("demo-worker-1", "demo-worker-2")


def _beads_runner() -> list[str]:
    """This very beads-runner, whatever is on PATH."""
    script = Path(sys.executable).parent / "beads-runner"
    return [str(script)] if script.exists() else [sys.executable, "-m", "beads_runner.cli"]


class DemoProcesses:
    """The subprocesses of `demo --engine hatchet`: the engine, the workers, the runner.

    Each runs in its own session, so a Ctrl-C at the terminal reaches the demo alone, which then
    stops them in order: the runner, the workers (SIGTERM: they finish what they run), the engine
    (SIGTERM: it stops hatchet-lite, then its PostgreSQL, and keeps the data)."""

    def __init__(self, repo: Path, log_dir: Path):
        self.repo = repo
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def spawn(self, name: str, args: list[str], env: dict[str, str], *, to_terminal: bool = False) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        from beads_runner.hatchet_local import die_with_parent

        out = None if to_terminal else open(self.log(name), "ab")  # noqa: SIM115 - the child holds it
        try:
            # Also stopped (SIGTERM) if the demo itself dies without cleaning up, by kill -9 say.
            proc = subprocess.Popen([*_beads_runner(), "--repo", str(self.repo), *args], env=env,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=None if to_terminal else subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=die_with_parent)
        finally:
            if out is not None:
                out.close()
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.out"

    def tail(self, name: str, chars: int = 3000) -> str:
        try:
            return self.log(name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        # A second Ctrl-C (or SIGTERM) must not cut the stopping short and leave an engine behind.
        try:
            previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: nothing to guard
            self._stop_all()
            return
        try:
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                proc.send_signal(signal.SIGTERM)  # to the process, which stops its own children in order
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                click.echo(f"{name} did not stop within 60 s: killed", err=True)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _engine_env(model_env: dict[str, str]) -> dict[str, str]:
    """The environment for the demo's processes: the scripted model's, and no Hatchet client
    settings of the user's (a token for another engine would send the runs there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHET_CLIENT_")}
    env.update(model_env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _wait_for_engine(procs: DemoProcesses, up: subprocess.Popen, env: dict[str, str]) -> dict[str, str]:
    """Until `beads-runner hatchet status` says up; then the client settings `up` wrote."""
    from beads_runner.hatchet_local import layout_for, read_client_env

    client_env = layout_for(procs.repo / STATE_DIR).client_env
    deadline = time.monotonic() + ENGINE_READY_TIMEOUT
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise _up_failed(procs, up)
        status = subprocess.run([*_beads_runner(), "--repo", str(procs.repo), "hatchet", "status"], env=env,
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        if status.returncode == 0 and client_env.exists():
            return read_client_env(client_env)
        time.sleep(1.0)
    raise RunnerError(f"the local Hatchet engine was not up within {ENGINE_READY_TIMEOUT:.0f} s",
                      fix=f"see {procs.log('hatchet-up')} and {layout_for(procs.repo / STATE_DIR).logs}")


# hatchet-sdk logs this once the worker has registered the workflow and listens for tasks.
WORKER_READY = "waiting for tasks"
WORKER_READY_TIMEOUT = 180.0


def _wait_for_workers(procs: DemoProcesses, workers: dict[str, subprocess.Popen]) -> None:
    """Until every worker has registered the workflow: runs submitted before that find none."""
    deadline = time.monotonic() + WORKER_READY_TIMEOUT
    waiting = set(workers)
    while waiting:
        for name in sorted(waiting):
            if workers[name].poll() is not None:
                raise RunnerError(f"worker {name} exited {workers[name].returncode} at start: "
                                  f"{procs.tail(name, 600).strip() or 'no output'}",
                                  fix=f"see {procs.log(name)}")
            if WORKER_READY in procs.tail(name, 100_000):
                waiting.discard(name)
        if waiting and time.monotonic() > deadline:
            raise RunnerError(f"worker(s) {', '.join(sorted(waiting))} not ready within {WORKER_READY_TIMEOUT:.0f} s",
                              fix=f"see their output in {procs.log_dir}")
        if waiting:
            time.sleep(0.5)


def _up_failed(procs: DemoProcesses, up: subprocess.Popen) -> RunnerError:
    """`hatchet up` gave up: its own error and fix (it prints both), else the end of its output."""
    lines = [line.strip() for line in procs.tail("hatchet-up").splitlines()]
    error = next((line.removeprefix("error:").strip() for line in lines if line.startswith("error:")), None)
    fix = next((line.removeprefix("fix:").strip() for line in lines if line.startswith("fix:")), None)
    where = procs.log("hatchet-up")
    if error:
        return RunnerError(f"`beads-runner hatchet up` exited {up.returncode}: {error}",
                           fix=f"{fix or 'see the error'} (its output: {where})")
    tail = " | ".join(line for line in lines[-5:] if line) or "no output"
    return RunnerError(f"`beads-runner hatchet up` exited {up.returncode}: {tail}",
                       fix=f"see {where}; as root, PostgreSQL runs as the postgres user, so every directory "
                           "above the demo must be enterable by others (e.g. DIR under /tmp, mode 755)")


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_on_local_hatchet(repo: Path, model_env: dict[str, str]) -> tuple[int, float]:
    echo = click.echo
    env = _engine_env(model_env)
    procs = DemoProcesses(repo, repo / STATE_DIR / "logs" / "demo")
    # Ctrl-C and SIGTERM end the demo through the `finally` below, which stops what it started, even
    # where SIGINT was inherited ignored (a shell's background job) and Python would not raise.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        echo("Starting a local Hatchet engine (`beads-runner hatchet up`; the first start creates its database)")
        up = procs.spawn("hatchet-up", ["hatchet", "up", "--ready-timeout", str(int(ENGINE_READY_TIMEOUT))], env)
        client = _wait_for_engine(procs, up, env)
        echo(f"  engine up: gRPC {client.get('HATCHET_CLIENT_HOST_PORT')}, "
             f"API {client.get('HATCHET_CLIENT_SERVER_URL')}")
        env.update(client)
        workers = {name: procs.spawn(name, ["worker", "--name", name], env) for name in WORKERS}
        _wait_for_workers(procs, workers)
        echo(f"  workers: {', '.join(WORKERS)} (their output: {procs.log_dir})")
        echo("Running `beads-runner start --once` against it")
        started = time.monotonic()
        runner = procs.spawn("start", ["start", "--once"], env, to_terminal=True)
        code = runner.wait()
        elapsed = time.monotonic() - started
        for name, worker in workers.items():
            if worker.poll() is not None:
                echo(f"  {name} exited early ({worker.returncode}): see {procs.log(name)}", err=True)
        return code, elapsed
    finally:
        echo("Stopping the runner, the workers and the engine (its data stays for the next `hatchet up`)")
        procs.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
