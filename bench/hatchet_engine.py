"""The runner on a real Hatchet engine against the embedded one (issue 10, item 6):
`python -m bench.hatchet_engine [--write] [--smoke]`.

One run measures three rows side by side, each on a repository of its own:

- embedded  `beads-runner start` on the embedded SQLite engine (the default);
- hatchet/1 `engine.kind = "hatchet"` on a local engine (`beads-runner hatchet up`: hatchet-lite from
            .tools/bin and its own PostgreSQL), with one `beads-runner worker`;
- hatchet/2 the same with two workers.

For each row, with the latency-bound `command` agent of bench/rig.py (sleeps a fixed time, stamps its
start and end), the jsonl tracker and one trivial command gate:

1. Pickup. `beads-runner start` idles; an issue is created at a random moment (0.2–1.0 s after the
   previous one finished); pickup = the agent's own start stamp − the moment the create returned.
   The same runs give the dispatch overhead per step on an idle engine: the time between one step's
   end and the next one's start, from the step times the engine itself reports (SQLite attempts
   table; Hatchet's task started_at/finished_at), and submit → first step.
2. Throughput. bench/throughput.py's backlog (every fifth issue depends on the one before) through
   `beads-runner start --once` with three sessions; runner overhead per issue, slot use and the
   breakdown are bench/throughput.py's `runner_metrics`; the sequential loop (bench/baseline.py) runs once on
   an identical repository and every row's wall time is compared with it.

`--smoke` renders the report from made-up figures without an engine (what the unit test checks).
The results go to bench/RESULTS.md (with --write) between their own markers.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.hatchet_record import ROWS, engine_dispatch, hatchet_runs, row_label, row_name, step_gaps
from bench.hatchet_report import BEGIN, END, render, smoke_results
from bench.machine import machine_facts
from bench.report import publish, save_raw
from bench.rig import (
    AGENT_SCRIPT,
    RESULTS,
    ROOT,
    Daemon,
    Issues,
    make_repo,
    read_runs,
    read_stamps,
    tracker_env,
    wait_for,
)
from bench.stats import in_ms, summary
from bench.throughput import backlog, run_baseline, runner_metrics


# --- one repository per row --------------------------------------------------------------------
@dataclass
class Side:
    kind: str
    n_workers: int
    base: Path
    repo: Path
    stamps: Path
    env: dict[str, str]
    workers: Any = None
    worker_ready_s: list[float] = field(default_factory=list)

    def start_workers(self, timeout: float = 90.0) -> None:
        if self.kind != "hatchet":
            return
        from tests.e2e.hatchet_real import Workers

        self.workers = Workers(self.repo, self.env)
        for i in range(self.n_workers):
            t0 = time.time()
            name = f"w{i + 1}"
            proc = self.workers.start(name)

            def ready(name: str = name, proc: Any = proc) -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {name} exited {proc.returncode}: {self.workers.log(name)[-2000:]}")
                return any(m in self.workers.log(name) for m in WORKER_READY)

            wait_for(ready, timeout, f"worker {name} to listen", tick=0.1)
            self.worker_ready_s.append(time.time() - t0)

    def stop_workers(self) -> None:
        if self.workers is not None:
            self.workers.stop()
            self.workers = None


# What a worker's log says once it listens for its actions (hatchet-sdk 1.43).
WORKER_READY = ("started, waiting for tasks",)


def make_side(base: Path, kind: str, n_workers: int, agent_sleep: float, engine_env: dict[str, str] | None) -> Side:
    root = base / row_name(kind, n_workers).replace("/", "-")
    root.mkdir(parents=True)
    stamps = root / "stamps"
    stamps.mkdir()
    script = root / "agent.py"
    script.write_text(AGENT_SCRIPT)
    repo = make_repo(root / "repo", tracker="jsonl", agent_script=script, stamps=stamps, agent_sleep=agent_sleep,
                     gate=True)
    env = tracker_env("jsonl")
    for k in [k for k in env if k.startswith("HATCHET_CLIENT_")]:
        del env[k]
    if kind == "hatchet":
        from tests.e2e.hatchet_real import use_hatchet

        use_hatchet(repo)
        env.update(engine_env or {})
    return Side(kind, n_workers, root, repo, stamps, env)


def engine_runs(side: Side) -> dict[str, dict[str, Any]]:
    if side.kind == "hatchet":
        return hatchet_runs(side.repo, side.env)
    runs = read_runs(side.repo)
    for run in runs.values():  # the embedded engine's "landed" event is there; keep the same key set
        run.setdefault("landed", (run["steps"].get("commit") or {}).get("end"))
    return runs


# --- pickup on an idle runner ------------------------------------------------------------------
def bench_pickup(side: Side, n: int, seed: int = 7) -> dict[str, Any]:
    rnd = random.Random(seed)
    issues = Issues(side.repo, "jsonl")
    from beads_runner.tracker.jsonl import JsonlTracker

    tracker = JsonlTracker(side.repo, actor="bench")

    def closed(issue_id: str) -> bool:
        try:
            return tracker.show(issue_id).status == "closed"
        except Exception:  # noqa: BLE001 - read while the runner writes: try again
            return False

    daemon = Daemon(side.repo, side.env, side.base / "pickup-daemon.log").start()
    result: dict[str, Any] = {}
    lat: list[float] = []
    ready_at: dict[str, float] = {}
    try:
        result["daemon_start_s"] = daemon.wait_started() - daemon.t_spawn

        def one(issue_id: str) -> float:
            time.sleep(rnd.uniform(0.2, 1.0))
            t_ready = issues.create(issue_id, f"Write work/{issue_id}.txt")
            ready_at[issue_id] = t_ready
            t_start = wait_for(lambda: (read_stamps(side.stamps, issue_id) or [None])[0], 60, f"{issue_id} to start")
            wait_for(lambda: closed(issue_id), 120, f"{issue_id} to land", tick=0.05)
            return t_start - t_ready

        result["first_issue_s"] = one("px-w0")
        for i in range(n):
            lat.append(one(f"px-c{i}"))
    finally:
        result["exit_code"] = daemon.stop()
    result["pickup_s"] = summary(lat)
    ids = [f"px-c{i}" for i in range(n)]
    runs = wait_for(lambda: _settled(side, ids), 30, "the runs to show as finished", tick=0.5)
    parts: dict[str, list[float]] = {"ready→submitted": [], "process start→agent start": []}
    for issue_id in ids:
        run, t_start = runs.get(issue_id), read_stamps(side.stamps, issue_id)
        if run and t_start:
            parts["ready→submitted"].append(run["created"] - ready_at[issue_id])
            if run["steps"].get("process"):
                parts["process start→agent start"].append(t_start[0] - run["steps"]["process"]["start"])
    gaps = step_gaps(runs, ids, include_cap_wait=True)
    result["breakdown_ms"] = {k: in_ms(summary(v)) for k, v in {**parts, **gaps}.items()}
    dispatch = [v for k, vs in gaps.items() if k != "submitted→check-deps" for v in vs]
    result["dispatch_per_step_ms"] = in_ms(summary(dispatch))
    if side.kind == "hatchet":
        result["engine_dispatch_ms"] = {k: in_ms(summary(v)) for k, v in engine_dispatch(runs, ids).items()}
    result["run_wall_s"] = summary([r["finished"] - r["created"] for k, r in runs.items()
                                    if k in ids and r.get("finished")])
    return result


def _settled(side: Side, ids: list[str]) -> dict[str, dict[str, Any]] | None:
    runs = engine_runs(side)
    done = all(runs.get(i, {}).get("finished") and runs[i]["steps"].get("commit", {}).get("end") for i in ids)
    return runs if done else None


# --- throughput: a backlog through `start --once` ----------------------------------------------
def bench_throughput(side: Side, items: list[tuple[str, str, list[str]]]) -> dict[str, Any]:
    issues = Issues(side.repo, "jsonl")
    for issue_id, title, deps in items:
        issues.create(issue_id, title, deps=deps)
    daemon = Daemon(side.repo, side.env, side.base / "throughput-daemon.log", once=True).start()
    code = daemon.wait(timeout=600)
    wall = daemon.t_exit - daemon.t_spawn
    ids = [i for i, _, _ in items]
    try:
        runs = wait_for(lambda: _settled(side, ids), 30, "the runs to show as finished", tick=0.5)
    except TimeoutError:
        runs = engine_runs(side)
    agent_iv = {}
    for issue_id in ids:
        s, e = read_stamps(side.stamps, issue_id), read_stamps(side.stamps, issue_id, "end")
        if s and e:
            agent_iv[issue_id] = (s[-1], e[-1])
    landed = [k for k in ids if runs.get(k, {}).get("status") == "succeeded"]
    result: dict[str, Any] = {"exit_code": code, "wall_s": wall, "landed": len(landed), "issues": len(items),
                              "retries": sum(r["retries"] for r in runs.values())}
    result.update(runner_metrics({k: runs[k] for k in ids if k in runs}, agent_iv, items, daemon.t_spawn,
                                 daemon.t_exit, wall))
    ends = [runs[k]["finished"] for k in ids if (runs.get(k) or {}).get("finished")]
    if ends:
        # `--once` exits when the engine shows nothing active: on Hatchet no finished-run listener
        # wakes the daemon, so this tail can reach tracker.poll_interval (5 s).
        result["last_run_end_to_exit_s"] = daemon.t_exit - max(ends)
        result["wall_to_last_run_end_s"] = max(ends) - daemon.t_spawn
    gaps = step_gaps(runs, ids, include_cap_wait=False)
    result["dispatch_gaps_ms"] = {k: in_ms(summary(v)) for k, v in gaps.items()}
    result["dispatch_per_step_ms"] = in_ms(summary([v for k, vs in gaps.items() if k != "submitted→check-deps"
                                                  for v in vs]))
    if side.kind == "hatchet":
        result["engine_dispatch_ms"] = {k: in_ms(summary(v)) for k, v in
                                        engine_dispatch(runs, ids, children=("verify", "commit")).items()}
        per_worker: dict[str, int] = {}
        for k in ids:
            for w in (runs.get(k) or {}).get("workers") or ():
                per_worker[w] = per_worker.get(w, 0) + 1
        result["runs_per_worker"] = sorted(per_worker.values(), reverse=True)
    return result


# --- main --------------------------------------------------------------------------------------
def engine_version() -> str:
    from beads_runner.hatchet_local import find_engine_binaries

    try:
        lite = find_engine_binaries().get("lite") or ROOT / ".tools" / "bin" / "hatchet-lite"
    except Exception:  # noqa: BLE001
        lite = ROOT / ".tools" / "bin" / "hatchet-lite"
    import subprocess

    try:
        out = subprocess.run(["go", "version", "-m", str(lite)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "mod":
            return f"{parts[1]}@{parts[2]}"
    return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hatchet_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--issues", type=int, default=15, help="the backlog (default 15)")
    parser.add_argument("--pickup", type=int, default=8, help="issues created one at a time per row (default 8)")
    parser.add_argument("--agent-sleep", type=float, default=2.5)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--smoke", action="store_true", help="render made-up figures; no engine, nothing timed")
    parser.add_argument("--engine-home", type=Path, help="use the engine `hatchet up` already runs there")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        print(render(smoke_results()))
        return 0
    from tests.realtools import TOOLS_BIN

    missing = [n for n in ("hatchet-lite", "hatchet-migrate", "hatchet-admin") if not (TOOLS_BIN / n).exists()]
    if missing and not args.engine_home:
        print(f"error: {', '.join(missing)} missing from {TOOLS_BIN}\nfix: run `make tools`", file=sys.stderr)
        return 2
    from tests.e2e.hatchet_real import start_engine, stop_engine

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="beads-bench-hatchet-")
    base = args.workdir.resolve() if args.workdir else Path(tmp.name)
    base.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine_facts(), "issues": args.issues, "pickup_n": args.pickup,
                               "agent_sleep": args.agent_sleep, "rows": {}, "order": [], "notes": []}
    results["machine"]["command"] = " ".join(["python", "-m", "bench.hatchet_engine", *sys.argv[1:]])
    t0 = time.time()
    engine = None
    engine_home = None
    try:
        results["engine"] = {"version": engine_version()}
        if args.engine_home:
            from beads_runner.hatchet_local import read_client_env

            engine_env = read_client_env(args.engine_home / ".beads-runner" / "hatchet" / "client.env")
            results["engine"]["start_s"] = None
        else:
            # PostgreSQL runs as `postgres` when we are root: its home must be reachable (0755, under /tmp).
            engine_home = Path(tempfile.mkdtemp(prefix="beads-bench-hatchet-engine-", dir="/tmp"))
            os.chmod(engine_home, 0o755)
            print("[bench] starting the Hatchet engine …", file=sys.stderr, flush=True)
            t_engine = time.time()
            engine = start_engine(engine_home / "engine")
            results["engine"]["start_s"] = time.time() - t_engine
            engine_env = engine.client
        items = backlog(args.issues)
        for kind, n in ROWS:
            name = row_name(kind, n)
            print(f"[bench] {name} …", file=sys.stderr, flush=True)
            started = time.time()
            row: dict[str, Any] = {"label": row_label(kind, n)}
            results["rows"][name] = row
            results["order"].append(name)
            pside = make_side(base / "pickup", kind, n, 0.0, engine_env)
            tside = make_side(base / "throughput", kind, n, args.agent_sleep, engine_env)
            try:
                pside.start_workers()
                row["worker_ready_s"] = pside.worker_ready_s
                row["pickup"] = bench_pickup(pside, args.pickup)
            finally:
                pside.stop_workers()
            try:
                tside.start_workers()
                row["throughput"] = bench_throughput(tside, items)
            finally:
                tside.stop_workers()
            print(f"[bench] {name} done in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        print("[bench] the sequential loop …", file=sys.stderr, flush=True)
        lside = make_side(base / "loop", "embedded", 0, args.agent_sleep, None)
        issues = Issues(lside.repo, "jsonl")
        for issue_id, title, deps in items:
            issues.create(issue_id, title, deps=deps)
        wall, data = run_baseline(lside.repo, lside.env, lside.base / "baseline.json")
        results["loop"] = {"wall_s": wall, "landed": len(data["issues"]),
                           "agent_per_issue_s": summary([i["agent_end"] - i["agent_start"] for i in data["issues"]])}
        for row in results["rows"].values():
            t = row.get("throughput") or {}
            if t.get("wall_s"):
                t["ratio"] = wall / t["wall_s"]
            if t.get("wall_to_last_run_end_s"):
                t["ratio_to_last_run_end"] = wall / t["wall_to_last_run_end_s"]
    finally:
        if engine is not None:
            stop_engine(engine)
        if engine_home is not None:
            shutil.rmtree(engine_home, ignore_errors=True)
        save_raw(results, t0, None, "beads-bench-hatchet-last.json")
    return publish(render(results), write=args.write, path=RESULTS, begin=BEGIN, end=END, workdir=tmp)


if __name__ == "__main__":
    sys.exit(main())
