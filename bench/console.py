"""The console under a long history: `python -m bench.console [--runs 10000] [--requests 50]`.

Real components: the console's Starlette application, the embedded engine's SQLite (its schema and
queries, LocalEngine), the page templates, `status`'s run data. Stand-in: the history itself,
imported by `seed_history` through the state's owner (`Store.import_history`: landed and handed-over
runs with their steps, tries and events, spread over 14 days; the newest two submitted, in flight),
since running 10,000 real sessions would take hours. Latency: requests through Starlette's TestClient (in
process, no network).

Measured: p50/p95 of `GET /api/runs` (default page: the newest 50), `GET /runs` (the runs page) and
`GET /` (Now); and the RSS the console adds to a daemon-like process: a process holding a
LocalEngine on the history, then importing the console and serving it with uvicorn on a loopback
port in a thread (as `start --ui` does), after answering each kind of request three times (API
runs at 50 and at 100 a page, the runs page, Now, Charts, /metrics, a run's page), from a client
process; and the same for real: `beads-runner start --ui` after that load against `beads-runner start`,
side by side, each on its own copy of the history.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from workflows.task_flow import SESSION_KEY, TASK_FLOW
from bench.rig import runner_started

STEPS = [s.name for s in TASK_FLOW.steps]


def seed_history(db_path: Path, n: int, *, running: int = 2, failed_every: int = 7, now: float | None = None,
                 seed: int = 1, issue_prefix: str = "bench") -> list[str]:
    """`n` runs in the embedded engine's database at `db_path` (created with its schema): every
    `failed_every`-th run handed over (failed at process), the rest landed, spread over 14 days, each
    with its steps, tries and events, imported through the state's owner (`Store.import_history`);
    then the newest `running` submitted to the engine (in flight, queued). Returns the run ids,
    oldest first."""
    from workflows.local import LocalEngine
    from workflows.task_flow import TaskInput

    engine = LocalEngine(db_path, TASK_FLOW)
    now = time.time() if now is None else now
    rnd = random.Random(seed)
    finished = n - running

    def history():
        for i in range(finished):
            created = now - (n - i) * (14 * 86400 / max(n, 1))
            key = f"{issue_prefix}-{i}"
            failed = i % failed_every == 0
            landed = {"sha": f"{i:040x}", "target": "main", "close_reason": f"Landed {i:08x} on main"}
            t, steps = created, []
            for name in STEPS:
                dur = {"check-deps": 0.1, "process": rnd.uniform(20, 200), "verify": rnd.uniform(2, 10),
                       "commit": 0.5}[name]
                step = {"name": name, "max_attempts": 3, "timeout": 3600,
                        "concurrency_key": SESSION_KEY if name == "process" else None}
                if any(done["status"] == "failed" for done in steps):
                    steps.append({**step, "status": "pending", "attempt": 0})
                    continue
                failing = failed and name == "process"
                step.update(status="failed" if failing else "succeeded", attempt=3 if failing else 1,
                            started_at=t, finished_at=t + dur,
                            error="quality gates still fail" if failing else None,
                            notes={"tokens": 1200, "cost": 0.012} if name == "process" else {},
                            output=None if failing else
                            {"proceed": True, "issue": {"id": key, "title": f"Bench issue {i}"}}
                            if name == "check-deps" else landed if name == "commit" else {})
                steps.append(step)
                t += dur
            yield {"id": f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(created))}-{i:06x}",
                   "workflow": TASK_FLOW.name, "key": key, "input": {"issue_id": key, "repo": "/bench"},
                   "status": "failed" if failed else "succeeded", "outcome": None if failed else landed,
                   "failed_step": "process" if failed else None,
                   "error": "quality gates still fail" if failed else None,
                   "created_at": created, "finished_at": t, "steps": steps}

    runs = list(history())
    engine.import_history(runs)
    ids = [run["id"] for run in runs]
    for i in range(finished, n):
        ids.append(engine.submit(TaskInput(issue_id=f"{issue_prefix}-{i}", repo="/bench"))[0])
    engine.close()
    return ids


def _make_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / ".beads-runner.toml").write_text(textwrap.dedent("""\
        [tracker]
        kind = "jsonl"
        [agent]
        kind = "command"
        command = "true"
        """))
    return repo


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.95 * len(samples)))]


def measure_latency(repo: Path, requests: int) -> dict[str, tuple[float, float]]:
    from starlette.testclient import TestClient

    from beads_runner.config import load_config
    from beads_runner.console.app import build_app
    from beads_runner.services import Services

    svc = Services(repo, load_config(repo))
    client = TestClient(build_app(svc), base_url="http://127.0.0.1:8765")
    out = {}
    for path in ("/api/runs", "/runs", "/"):
        client.get(path).raise_for_status()  # warm: the engine's connection, the templates
        times = []
        for _ in range(requests):
            t0 = time.perf_counter()
            client.get(path).raise_for_status()
            times.append(time.perf_counter() - t0)
        out[path] = _percentiles(times)
    return out


_RSS_CHILD = """
import json, subprocess, sys, time
from pathlib import Path
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
import beads_runner.cli  # the daemon is `beads-runner start --ui`: its command line is loaded
from beads_runner.config import load_config
from beads_runner.logs import configure_logging
from beads_runner.services import Services
from beads_runner.daemon import build_engine
repo = Path(sys.argv[1]); port = int(sys.argv[2])
svc = Services(repo, load_config(repo))
configure_logging(svc.state_dir / 'logs')
engine = build_engine(svc)
engine.runs(limit=50); engine.sessions_in_use('agent-session')
marks = {'before': rss()}
import beads_runner.console.app, beads_runner.console.pages
marks['imported'] = rss()
server = beads_runner.console.app.start_in_thread(svc, engine, '127.0.0.1', port)
marks['listening'] = rss()
run_id = engine.runs(limit=1)[0].id
paths = ['/api/runs'] + ['/api/runs', '/runs', '/', '/charts', '/metrics', '/api/runs?limit=100', f'/runs/{run_id}'] * 3
# The requests come from another process (a browser would): the client's own memory is not the console's.
subprocess.run([sys.executable, '-c', CLIENT, str(port), *paths[:1]], check=True)
marks['first_request'] = rss()
subprocess.run([sys.executable, '-c', CLIENT, str(port), *paths[1:]], check=True)
marks['after'] = rss()
print(json.dumps(marks))
"""
_CLIENT = """
import sys, urllib.request
for path in sys.argv[2:]:
    urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}{path}', timeout=60).read()
"""


def measure_rss(repo: Path) -> dict[str, int]:
    """VmRSS (KiB) of a daemon-like process at each mark: before the console, imported, listening,
    after its first request, after the whole load."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child = _RSS_CHILD.replace("CLIENT", repr(_CLIENT))
    proc = subprocess.run([sys.executable, "-c", child, str(repo), str(port)], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def measure_daemons(root: Path, runs: int) -> tuple[int, int]:
    """Two real runners, `beads-runner start` and `beads-runner start --ui`, each on its own copy of a
    history of `runs` finished runs (idle: nothing to claim), the console's pages asked for (the
    load of `measure_rss`, from this process); VmRSS (KiB) of each, read at the same moment."""
    import shutil
    import socket
    import urllib.request

    exe = Path(sys.executable).with_name("beads-runner")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs, logs, repos = [], [], []
    for name in ("plain", "ui"):
        (root / name).mkdir(parents=True)
        repo = _make_repo(root / name)
        (repo / ".beads").mkdir()
        (repo / ".beads" / "issues.jsonl").write_text("")
        subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@localhost",
                        "commit", "-q", "-m", "init"], check=True)
        if not repos:
            seed_history(repo / ".beads-runner" / "state.db", runs, running=0)
        else:
            shutil.copytree(repos[0] / ".beads-runner", repo / ".beads-runner", dirs_exist_ok=True)
        repos.append(repo)
    for name, repo, extra in (("plain", repos[0], []), ("ui", repos[1], ["--ui", "--ui-port", str(port)])):
        logs.append(root / f"{name}.log")
        procs.append(subprocess.Popen([str(exe), "--repo", str(repo), "start", *extra],
                                      stdout=subprocess.DEVNULL, stderr=logs[-1].open("w")))
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not all(runner_started(repo, proc.pid) for repo, proc in zip(repos, procs, strict=True)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("a runner did not start: " + " / ".join(log.read_text()[-500:] for log in logs))
            time.sleep(0.2)
        while True:
            try:
                newest = json.loads(urllib.request.urlopen(f"{base}/api/runs?limit=1", timeout=60).read())
                break
            except OSError:  # not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        run_id = newest["runs"][0]["run_id"]
        for path in ['/api/runs', '/runs', '/', '/charts', '/metrics', '/api/runs?limit=100', f'/runs/{run_id}'] * 3:
            urllib.request.urlopen(f"{base}{path}", timeout=60).read()
        return _rss_of(procs[0].pid), _rss_of(procs[1].pid)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


def screenshots(out: Path, runs: int = 400) -> None:
    """docs/console-{now,runs,charts}-history.png: the console over a stand-in history, in Debian's
    chromium (Playwright with its executable path)."""
    from playwright.sync_api import sync_playwright

    from beads_runner.config import load_config
    from beads_runner.console.app import start_in_thread
    from beads_runner.daemon import build_engine
    from beads_runner.services import Services

    with tempfile.TemporaryDirectory() as tmp:
        repo = _make_repo(Path(tmp))
        seed_history(repo / ".beads-runner" / "state.db", runs, running=3, issue_prefix="demo")
        svc = Services(repo, load_config(repo))
        server = start_in_thread(svc, build_engine(svc), "127.0.0.1", 18765)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            for path, name in (("/", "now-history"), ("/runs", "runs"), ("/charts", "charts")):
                page.goto(f"http://127.0.0.1:18765{path}")
                page.screenshot(path=str(out / f"console-{name}.png"), full_page=path == "/charts")
            browser.close()
        server.should_exit = True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--rss-rounds", type=int, default=5, help="Daemon-like processes measured (median reported).")
    ap.add_argument("--daemon-rounds", type=int, default=5, help="Pairs of real runners measured (median reported).")
    ap.add_argument("--screenshots", type=Path, default=None, help="Only save screenshots into this directory.")
    args = ap.parse_args(argv)
    if args.screenshots:
        screenshots(args.screenshots)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        repo = _make_repo(Path(tmp))
        t0 = time.perf_counter()
        seed_history(repo / ".beads-runner" / "state.db", args.runs)
        seeded = time.perf_counter() - t0
        lat = measure_latency(repo, args.requests)
        rounds = [measure_rss(repo) for _ in range(args.rss_rounds)]
        daemons = [measure_daemons(Path(tmp) / f"daemons-{i}", args.runs) for i in range(args.daemon_rounds)]
    print(f"history: {args.runs} runs (stand-in, seeded in {seeded:.1f} s); {args.requests} requests each, "
          f"TestClient in process; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print("| request | p50 | p95 | target |")
    print("|---|---|---|---|")
    for path, (p50, p95) in lat.items():
        target = "≤ 200 ms p50" if path in ("/api/runs", "/runs") else "-"
        print(f"| GET {path} | {p50 * 1000:.1f} ms | {p95 * 1000:.1f} ms | {target} |")

    def mb(key: str, base: str = "before") -> float:
        return statistics.median(r[key] - r[base] for r in rounds) / 1024

    added = [(r["after"] - r["before"]) / 1024 for r in rounds]
    before = statistics.median(r["before"] for r in rounds) / 1024
    print(f"| console RSS added to a daemon-like process, median of {len(rounds)} | {mb('after'):.1f} MB "
          f"(rounds: {', '.join(f'{a:.1f}' for a in added)}; before {before:.1f} MB) "
          f"| | ≤ 5 MB |")
    print(f"|   of which: imports {mb('imported'):.1f} MB, listening {mb('listening', 'imported'):.1f} MB, "
          f"first request {mb('first_request', 'listening'):.1f} MB, the rest of the load "
          f"{mb('after', 'first_request'):.1f} MB | | | |")
    diffs = [(ui - plain) / 1024 for plain, ui in daemons]
    print(f"| RSS of `start --ui` after the load minus `start`, real runners side by side, median of "
          f"{len(daemons)} pairs | {statistics.median(diffs):.1f} MB (pairs: {', '.join(f'{d:.1f}' for d in diffs)}; "
          f"`start` {statistics.median(p for p, _ in daemons) / 1024:.1f} MB) | | ≤ 5 MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
