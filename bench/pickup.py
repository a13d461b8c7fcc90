"""Benchmark: pickup latency. From the moment an issue becomes ready (created; blocker closed by a
person; blocker closed by the runner itself) to the moment its agent process starts, as the agent
itself stamps it; and the daemon's idle RSS."""

from __future__ import annotations

import random
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

from beads_runner.errors import RunnerError
from bench.machine import RssSampler
from bench.rig import AGENT_SCRIPT, Daemon, Issues, make_repo, read_runs, read_stamps, tracker_env, wait_for
from bench.stats import in_ms, summary


def bench_pickup(workdir: Path, tracker: str = "jsonl", created: int = 20, closed_by_person: int = 8,
                 closed_by_runner: int = 5, seed: int = 7) -> dict[str, Any]:
    rnd = random.Random(seed)
    base = workdir / f"pickup-{tracker}"
    base.mkdir(parents=True)
    stamps = base / "stamps"
    stamps.mkdir()
    script = base / "agent.py"
    script.write_text(AGENT_SCRIPT)
    repo = make_repo(base / "repo", tracker=tracker, agent_script=script, stamps=stamps)
    issues = Issues(repo, tracker)
    # Issues a person holds, each blocking one of ours: set up before the daemon starts.
    for k in range(closed_by_person):
        issues.create(f"bx-h{k}", f"Human work {k}", actor="alice")
        issues.claim_as(f"bx-h{k}", "alice")
        issues.create(f"bx-d{k}", f"Waits for the person {k}", deps=[f"bx-h{k}"])
    daemon = Daemon(repo, tracker_env(tracker), base / "daemon.log").start()
    sampler = RssSampler(daemon.proc.pid, interval=0.25)
    result: dict[str, Any] = {"tracker": tracker}
    try:
        t_started = daemon.wait_started()
        result["daemon_start_s"] = t_started - daemon.t_spawn
        sampler.start()
        time.sleep(3.0)  # idle: nothing ready, no session
        idle = [s["self_kb"] for s in sampler.samples if s["t"] > t_started + 1.0]
        result["idle_rss_mb_after_start"] = statistics.median(idle) / 1024 if idle else None

        def run_done(issue_id: str) -> bool:
            try:
                run = read_runs(repo).get(issue_id)
            except (sqlite3.Error, RunnerError):  # the runner is creating or migrating it
                return False
            return bool(run and run["status"] in ("succeeded", "failed"))

        def one(issue_id: str, make_ready) -> tuple[float, float]:
            time.sleep(rnd.uniform(0.2, 1.0))  # out of phase with the watcher's 0.2 s tick
            t_ready = make_ready()
            t_start = wait_for(lambda: (read_stamps(stamps, issue_id) or [None])[0], 60, f"{issue_id} to start")
            wait_for(lambda: run_done(issue_id), 120, f"{issue_id} to finish", tick=0.05)
            return t_ready, t_start

        t_ready, t_start = one("bx-w0", lambda: issues.create("bx-w0", "Warm-up"))
        result["first_issue_s"] = t_start - t_ready
        lat_created = []
        for i in range(created):
            t_ready, t_start = one(f"bx-c{i}", lambda i=i: issues.create(f"bx-c{i}", f"Created {i}"))
            lat_created.append(t_start - t_ready)
        lat_person = []
        for k in range(closed_by_person):
            t_ready, t_start = one(f"bx-d{k}", lambda k=k: issues.close_as(f"bx-h{k}", "alice"))
            lat_person.append(t_start - t_ready)
        lat_runner, lat_runner_finish = [], []
        for k in range(closed_by_runner):
            def pair(k=k) -> float:
                t = issues.create(f"bx-a{k}", f"First of pair {k}")
                issues.create(f"bx-b{k}", f"Second of pair {k}", deps=[f"bx-a{k}"])
                return t
            one(f"bx-b{k}", pair)
            runs = read_runs(repo)
            t_start = read_stamps(stamps, f"bx-b{k}")[0]
            first = runs[f"bx-a{k}"]
            lat_runner.append(t_start - first["landed"])  # closed just after `landed` (conservative)
            lat_runner_finish.append(t_start - first["finished"])  # after close and worktree removal
        time.sleep(3.0)
        t_idle = time.time() - 2.5
        idle = [s["self_kb"] for s in sampler.samples if s["t"] > t_idle]
        result["idle_rss_mb_after_work"] = statistics.median(idle) / 1024 if idle else None
        result["idle_children_after_work"] = max((s["children"] for s in sampler.samples if s["t"] > t_idle),
                                                 default=None)
    finally:
        sampler.stop()
        result["exit_code"] = daemon.stop()
    result["created"] = summary(lat_created)
    result["blocker_closed_by_person"] = summary(lat_person)
    result["blocker_closed_by_runner"] = summary(lat_runner)
    result["blocker_closed_by_runner_from_run_end"] = summary(lat_runner_finish)
    result["all_ready_moments"] = summary(lat_created + lat_person + lat_runner)
    result["peak_rss_mb"] = max((s["self_kb"] for s in sampler.samples), default=0) / 1024
    # Where the time goes, for issues created on an idle runner (the engine's record, same clock).
    runs = read_runs(repo)
    parts: dict[str, list[float]] = {"ready→claimed+submitted": [], "submitted→check-deps start": [],
                                     "check-deps": [], "check-deps end→process start": [],
                                     "process start→agent start": []}
    for i in range(created):
        issue_id = f"bx-c{i}"
        run, t_start = runs.get(issue_id), read_stamps(stamps, issue_id)
        if not run or not t_start:
            continue
        cd, pr = run["steps"]["check-deps"], run["steps"]["process"]
        parts["ready→claimed+submitted"].append(run["created"] - (t_start[0] - lat_created[i]))
        parts["submitted→check-deps start"].append(cd["first_start"] - run["created"])
        parts["check-deps"].append(cd["end"] - cd["start"])
        parts["check-deps end→process start"].append(pr["first_start"] - cd["end"])
        parts["process start→agent start"].append(t_start[0] - pr["start"])
    result["created_breakdown_ms"] = {k: in_ms(summary(v)) for k, v in parts.items()}
    return result
