"""`beads-runner demo`: the whole flow on a sample repository, offline.

Builds a small Python library in a fresh git repository with five beads issues (in beads' JSONL
export format, so no `bd` is needed). Four land: one of them is blocked by another until that one
lands, and one is first done wrong, then fixed by the same session once it is shown the failing
gate. The fifth stays broken however often it is shown the report, so it goes to a person. The
agent is the real `opencode` binary; its model is the scripted model server shipped with
beads-runner, which answers with tool calls that really write the files.

`--engine hatchet` runs the same backlog on a local Hatchet engine instead of the embedded one:
`beads-runner hatchet up` for the demo repository, two `beads-runner worker` processes and
`beads-runner start --once`, each a subprocess of the demo, all stopped when it ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import click

from beads_runner.config import CONFIG_FILE, STATE_DIR, load_config
from beads_runner.environ import environment
from beads_runner.daemon import Runner
from beads_runner.errors import RunnerError
from beads_runner.gitcmd import run_git
from beads_runner.logs import configure_logging
from beads_runner.sandbox import SandboxUnavailable
from beads_runner.scripted_model import ScriptedModelServer
from beads_runner.services import Services, register_services
from beads_runner.tracker.jsonl import JsonlTracker

FILES = {
    "mathlib/__init__.py": '"""A tiny library the demo\'s agent extends."""\n',
    "tests/__init__.py": "",
    "tests/test_package.py": textwrap.dedent("""\
        import unittest

        import mathlib


        class PackageTest(unittest.TestCase):
            def test_imports(self):
                self.assertTrue(mathlib.__doc__)
        """),
    "README.md": "# mathlib\n\nA sample repository for the beads-runner demo.\n",
    ".gitignore": ".beads-runner/\n__pycache__/\n",
}

# (id, title, description, depends on, files the scripted agent writes)
# demo-mul's first attempt is wrong: the gate fails and the fix loop gives the session the report.
WRONG_FIRST = {"demo-mul": {"mathlib/multiply.py": "def multiply(a, b):\n    return a + b\n"}}
ISSUES = [
    ("demo-add", "Add add(a, b)", "mathlib needs an `add(a, b)` function returning the sum, with a test.", [], {
        "mathlib/add.py": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n    return a + b\n",
        "tests/test_add.py": "import unittest\n\nfrom mathlib.add import add\n\n\nclass AddTest(unittest.TestCase):\n"
                             "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n",
    }),
    ("demo-total", "Add total(numbers) built on add()",
     "A `total(numbers)` function that sums a list using `add`, with a test.", ["demo-add"], {
         "mathlib/total.py": "from functools import reduce\n\nfrom mathlib.add import add\n\n\n"
                             "def total(numbers):\n    \"\"\"Sum a list with add().\"\"\"\n"
                             "    return reduce(add, numbers, 0)\n",
         "tests/test_total.py": "import unittest\n\nfrom mathlib.total import total\n\n\n"
                                "class TotalTest(unittest.TestCase):\n    def test_total(self):\n"
                                "        self.assertEqual(total([1, 2, 3, 4]), 10)\n",
     }),
    ("demo-mul", "Add multiply(a, b)", "A `multiply(a, b)` function, with a test.", [], {
        "mathlib/multiply.py": "def multiply(a, b):\n    \"\"\"Return a * b.\"\"\"\n    return a * b\n",
        "tests/test_multiply.py": "import unittest\n\nfrom mathlib.multiply import multiply\n\n\n"
                                  "class MultiplyTest(unittest.TestCase):\n    def test_multiply(self):\n"
                                  "        self.assertEqual(multiply(6, 7), 42)\n",
    }),
    ("demo-docs", "Write USAGE.md", "Document how to use the library in USAGE.md.", [], {
        "USAGE.md": "# Using mathlib\n\n```python\nfrom mathlib.add import add\nadd(2, 3)  # 5\n```\n",
    }),
    ("demo-div", "Add divide(a, b)", "A `divide(a, b)` function, with a test.", [], {
        # The scripted agent gets this one wrong: the gate catches it and a person gets the issue.
        "mathlib/divide.py": "def divide(a, b):\n    return a // b\n",
        "tests/test_divide.py": "import unittest\n\nfrom mathlib.divide import divide\n\n\n"
                                "class DivideTest(unittest.TestCase):\n    def test_divide(self):\n"
                                "        self.assertEqual(divide(7, 2), 3.5)\n",
    }),
]


def demo_script(delay: float = 0.0) -> dict:
    """The scripted model's answers: for each issue, write its files, then summarise."""
    scenarios = []
    for issue_id, title, _desc, _deps, files in ISSUES:
        def writes(contents: dict) -> list:
            return [{"name": "write", "args": {"filePath": p, "content": c}} for p, c in contents.items()]

        rounds = [[
            {"text": f"Implementing {issue_id}: writing {', '.join(files)}.",
             "tools": writes({**files, **WRONG_FIRST.get(issue_id, {})})},
            {"text": f"{title}: added {', '.join(files)}."},
        ]]
        if issue_id in WRONG_FIRST:  # the second user message is the gate report: fix it
            rounds.append([
                {"text": "The test shows multiply adds; fixing it.", "tools": writes(files)},
                {"text": f"{title}: added {', '.join(files)}; fixed multiply after the failing test."},
            ])
        scenarios.append({"match": f"Issue {issue_id} ", "delay": delay, "rounds": rounds})
    return {"scenarios": scenarios, "fallback": {"text": "No scripted answer for this prompt; nothing done."}}


def _git(repo: Path, *args: str) -> str:
    result = run_git(args, cwd=repo)
    if not result.ok:
        raise RunnerError(f"git {' '.join(args[:2])} failed in {repo}: {result.message()}")
    return result.stdout.decode("utf-8", "replace")


def build_sample_repo(repo: Path, fresh: bool = True, engine: str = "local") -> JsonlTracker:
    if fresh and repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True, exist_ok=True)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "Demo User")
    _git(repo, "config", "user.email", "demo@example.com")
    for rel, text in FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text, encoding="utf-8")
    (repo / ".beads").mkdir(exist_ok=True)
    (repo / ".beads" / "issues.jsonl").write_text("", encoding="utf-8")
    tracker = JsonlTracker(repo, actor="beads-runner")
    for issue_id, title, desc, deps, _files in ISSUES:
        tracker.create(title, description=desc, deps=deps, priority=2, issue_type="task", id=issue_id)
    python = sys.executable
    (repo / CONFIG_FILE).write_text(textwrap.dedent(f"""\
        # The demo's configuration (see `beads-runner init --print` for every key).
        [tracker]
        kind = "jsonl"            # no bd here: beads' JSONL export format in .beads/issues.jsonl
        poll_interval = "2s"

        [agent]
        kind = "opencode"
        model = "scripted/scripted"   # the scripted model server the demo starts
        timeout = "5m"
        stall_timeout = "2m"

        [engine]
        kind = "{engine}"
        max_sessions = 3
        grace_period = "10s"

        [engine.retry]
        backoff = "1s"

        [land]
        target = "main"

        [[gates]]
        name = "tests"
        run = "{python} -m unittest discover -s tests -t . -q"
        timeout = "2m"
        """), encoding="utf-8")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "Sample library with a beads backlog")
    return tracker


ENGINES = ("local", "hatchet")


def run_demo(repo: Path, fresh: bool = True, delay: float = 0.0, engine: str = "local") -> int:
    echo = click.echo
    if engine not in ENGINES:
        raise RunnerError(f"unknown engine {engine!r}", fix=f"use one of: {', '.join(ENGINES)}")
    echo(f"Building the sample repository in {repo}")
    tracker = build_sample_repo(repo, fresh=fresh, engine=engine)
    for issue in tracker.ready():
        echo(f"  ready: {issue.id:<11} {issue.title}")
    echo("  (demo-total waits for demo-add; demo-mul is first done wrong and fixed after its failing gate;")
    echo("   demo-div stays wrong, so it goes to a person)")
    with ScriptedModelServer(demo_script(delay)) as server:
        echo(f"Scripted model server on {server.url}")
        env = server.opencode_env()
        # opencode keeps its sessions in the demo's own state dir; its package cache stays shared.
        env["XDG_DATA_HOME"] = str(repo / ".beads-runner" / "opencode-data")
        if engine == "hatchet":
            code, elapsed = _run_on_local_hatchet(repo, env)
        else:
            code, elapsed = _run_embedded(repo, env)
    return _report(repo, tracker, code, elapsed, engine)


def _run_embedded(repo: Path, env: dict[str, str]) -> tuple[int, float]:
    echo = click.echo
    with environment(env):
        svc = register_services(Services(repo, load_config(repo)))
        try:
            echo(f"Sandbox: {svc.enter_sandbox().describe()}")
        except SandboxUnavailable as exc:  # the demo still shows the flow, and says what is missing
            echo(f"Sandbox: none ({exc.message}); the demo runs unconfined. {exc.fix}")
        configure_logging(svc.state_dir / "logs")
        started = time.monotonic()
        code = Runner(svc).run(once=True)
        return code, time.monotonic() - started


# --- the demo on a local Hatchet engine ---------------------------------------------------------------
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


def _run_on_local_hatchet(repo: Path, model_env: dict[str, str]) -> tuple[int, float]:
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


def _report(repo: Path, tracker: JsonlTracker, code: int, elapsed: float, engine: str = "local") -> int:
    echo = click.echo
    echo(f"\nThe runner finished in {elapsed:.1f}s (exit {code}: 1 means a run failed, as demo-div should).\n")
    echo("git log main:")
    echo(_git(repo, "log", "main", "--format=  %h %s%n      %(trailers:key=Beads-Issue,key=Beads-Run,key=Agent,"
                          "key=Gates,separator=%x0a      )"))
    echo("Issues:")
    expected_closed = {i[0] for i in ISSUES} - {"demo-div"}
    ok = True
    for issue_id, *_ in ISSUES:
        issue = tracker.show(issue_id)
        extra = issue.close_reason if issue.status == "closed" else ", ".join(issue.labels)
        echo(f"  {issue_id:<11} {issue.status:<8} {extra}")
        want = "closed" if issue_id in expected_closed else "blocked"
        ok &= issue.status == want
    comments = tracker.comments("demo-div")
    if comments:
        echo("\nComment on demo-div:\n" + textwrap.indent(comments[-1]["text"], "  | ", lambda _line: True))
    branches = _git(repo, "branch", "--list", "--format=%(refname:short)", "beads-runner/*").split()
    echo(f"\nBranches kept for a person: {', '.join(branches) or 'none'}")
    exe = shutil.which("beads-runner") or str(Path(sys.executable).parent / "beads-runner")
    if engine == "hatchet":
        echo(f"\nTry: cd {repo} && {exe} hatchet up   (the engine again, with its data)")
        echo(f"     then in another terminal there: {exe} status && {exe} review && {exe} logs demo-total")
    else:
        echo(f"\nTry: cd {repo} && {exe} status && {exe} review && {exe} logs demo-total")
    if not ok:
        echo("\nDEMO FAILED: the issues did not end as expected (see above and .beads-runner/logs/).", err=True)
        return 1
    echo("\nDemo OK: four issues landed in dependency order (demo-mul after one fix from its gate report);")
    echo("the broken one went to a person with its comment and its branch.")
    return 0
