"""Benchmark: throughput against the sequential loop (bench/baseline.py), with the latency-bound
`command` agent or the real opencode on the scripted model: runner overhead per issue, slot use,
the wall-time ratio, and the daemon's RSS with three sessions running."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.machine import RssSampler, children_cpu
from bench.rig import (
    AGENT_SCRIPT,
    OPENCODE,
    PY,
    ROOT,
    Daemon,
    Issues,
    gate_seconds,
    git,
    make_repo,
    read_runs,
    read_stamps,
    tracker_env,
)
from bench.stats import between, busy_share, in_ms, max_overlap, summary, turnover


def backlog(n: int) -> list[tuple[str, str, list[str]]]:
    """n issues; every fifth depends on the one before it."""
    out = []
    for i in range(n):
        issue_id = f"bx-{i:02d}"
        deps = [f"bx-{i - 1:02d}"] if i % 5 == 4 else []
        out.append((issue_id, f"Write work/{issue_id}.txt", deps))
    return out


def opencode_script(items: Sequence[tuple[str, str, list[str]]], delay: float) -> dict:
    scenarios = [{"match": f"Issue {issue_id} (", "delay": delay, "rounds": [[
        {"text": f"Writing work/{issue_id}.txt.",
         "tools": [{"name": "write", "args": {"filePath": f"work/{issue_id}.txt", "content": issue_id + "\n"}}]},
        {"text": f"Added work/{issue_id}.txt."}]]} for issue_id, _, _ in items]
    return {"scenarios": scenarios, "fallback": {"text": "No scripted answer; nothing done."}}


def run_baseline(repo: Path, env: dict[str, str], out: Path) -> tuple[float, dict[str, Any]]:
    """The sequential loop (bench/baseline.py) on `repo`, as a process: its wall time, spawn to exit, and
    its per-issue record."""
    t0 = time.time()
    proc = subprocess.run([PY, "-m", "bench.baseline", str(repo), "--json-out", str(out)],
                          env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"baseline failed: {proc.stderr[-2000:]}{proc.stdout[-2000:]}")
    return wall, json.loads(out.read_text())


def runner_metrics(runs: dict[str, dict[str, Any]], agent_iv: dict[str, tuple[float, float]],
                   items: Sequence[tuple[str, str, list[str]]], t_spawn: float, t_exit: float,
                   runner_wall: float) -> dict[str, Any]:
    """Overhead per issue, its breakdown, and slot use, from the engine's record of the runs (`read_runs`'s
    shape), the agents' intervals and the backlog; `t_spawn`/`t_exit` bound the runner process."""
    result: dict[str, Any] = {}
    landed = [k for k, r in runs.items() if r["status"] == "succeeded"]
    slot_iv = [(r["steps"]["process"]["start"], r["steps"]["process"]["end"]) for r in runs.values()
               if r["steps"].get("process", {}).get("end")]
    # Overhead per issue: run wall (submitted → finished) minus agent, gates, and the time the run waited
    # for a free session (engine.prefetch claims the next issue before a slot frees: that wait is the
    # cap's queue, which any runner has, not overhead; the engine's own dispatch in it is ~1 ms).
    overhead, gates_all, agent_all = [], [], []
    parts: dict[str, list[float]] = {k: [] for k in (
        "submitted→check-deps start", "check-deps", "check-deps end→process start (waiting for a free session)",
        "process start→agent start",
        "agent end→process end, excl. gates", "process: gates (fix loop)", "process end→verify start",
        "verify (excl. gates run there)", "verify: gates run again", "verify end→commit start",
        "commit (excl. re-gate)", "commit: re-gate after rebase (est.)", "commit end→run finished")}
    rebased = 0
    for issue_id in landed:
        run = runs[issue_id]
        if issue_id not in agent_iv:
            continue
        a0, a1 = agent_iv[issue_id]
        st = run["steps"]
        g = gate_seconds(run)
        regate_s = g["regate"]
        rebased += bool((st.get("commit", {}).get("output") or {}).get("rebased"))
        agent_s = a1 - a0
        wall = run["finished"] - run["created"]
        cap_wait = max(0.0, between(st["check-deps"]["end"], st["process"]["first_start"]) or 0.0)
        overhead.append(wall - agent_s - g["total"] - cap_wait)
        gates_all.append(g["total"])
        agent_all.append(agent_s)
        for key, value in (
                ("submitted→check-deps start", between(run["created"], st["check-deps"]["first_start"])),
                ("check-deps", between(st["check-deps"]["start"], st["check-deps"]["end"])),
                ("check-deps end→process start (waiting for a free session)",
                 between(st["check-deps"]["end"], st["process"]["first_start"])),
                ("process start→agent start", between(st["process"]["start"], a0)),
                ("agent end→process end, excl. gates", between(a1, st["process"]["end"]) - g["process"]),
                ("process: gates (fix loop)", g["process"]),
                ("process end→verify start", between(st["process"]["end"], st["verify"]["first_start"])),
                ("verify (excl. gates run there)", between(st["verify"]["start"], st["verify"]["end"]) - g["verify"]),
                ("verify: gates run again", g["verify"]),
                ("verify end→commit start", between(st["verify"]["end"], st["commit"]["first_start"])),
                ("commit (excl. re-gate)", between(st["commit"]["start"], st["commit"]["end"]) - regate_s),
                ("commit: re-gate after rebase (est.)", regate_s),
                ("commit end→run finished", between(st["commit"]["end"], run["finished"]))):
            if value is not None:
                parts[key].append(value)
    result["overhead_per_issue_s"] = summary(overhead)
    result["gate_per_issue_s"] = summary(gates_all)
    result["agent_per_issue_s"] = summary(agent_all)
    result["rebased_and_regated"] = rebased
    result["breakdown_ms"] = {k: in_ms(summary(v)) for k, v in parts.items()}
    # Whole-run view: how far the runner's wall time is from perfect packing of the agent time.
    total_agent = sum(agent_all)
    result["ideal_wall_s"] = total_agent / 3
    result["excess_wall_per_issue_s"] = (runner_wall - total_agent / 3) * 3 / max(len(agent_all), 1)
    # Slot use: work waits from the moment it is ready (all issues without a blocker: at spawn;
    # the others: when their blocker landed and closed) until its agent starts.
    waiting = []
    for issue_id, _title, deps in items:
        if issue_id not in agent_iv:
            continue
        ready = t_spawn if not deps else runs.get(deps[0], {}).get("landed")
        if ready is not None and agent_iv[issue_id][0] > ready:
            waiting.append((ready, agent_iv[issue_id][0]))
    sessions = list(agent_iv.values())
    first = min(a for a, _ in sessions) if sessions else t_spawn
    result["max_concurrent_sessions"] = max_overlap(sessions)
    result["slots_from_spawn"] = busy_share(sessions, waiting, 3, t_spawn, t_exit)
    result["slots_from_first_session"] = busy_share(sessions, waiting, 3, first, t_exit)
    result["slots_held_from_first_session"] = busy_share(slot_iv, waiting, 3, first, t_exit)
    result["daemon_start_to_first_session_s"] = first - t_spawn
    result["slot_turnover_ms"] = in_ms(summary(turnover(slot_iv, 3)))
    result["agent_turnover_ms"] = in_ms(summary(turnover(sessions, 3)))
    return result


def bench_throughput(workdir: Path, *, agent: str = "command", n: int = 30, agent_sleep: float = 2.5,
                     model_delay: float = 1.0, tracker: str = "jsonl") -> dict[str, Any]:
    base = workdir / f"throughput-{agent}-{tracker}"
    base.mkdir(parents=True)
    items = backlog(n)
    env = tracker_env(tracker)
    server = None
    if agent == "opencode":
        from beads_runner.scripted_model import ScriptedModelServer

        server = ScriptedModelServer(opencode_script(items, model_delay)).start()
        env.update(server.opencode_env())
    if server is not None:
        # Both sides share one opencode data directory, used once before either is timed: a daemon
        # normally finds it in place (a never-used one makes the runner start its first session alone).
        env["XDG_DATA_HOME"] = str(base / "opencode-data")
        scratch = base / "warm-up"
        scratch.mkdir()
        git(scratch, "init", "-q")
        subprocess.run([str(OPENCODE), "run", "--format", "json", "--dir", str(scratch), "--model",
                        "scripted/scripted", "--title", "warm-up"], input="warm up", text=True, env=env,
                       capture_output=True, timeout=300, cwd=scratch)
    repos, stamps = {}, {}
    for side in ("runner", "baseline"):
        stamps[side] = base / f"stamps-{side}"
        stamps[side].mkdir()
        script = base / "agent.py"
        script.write_text(AGENT_SCRIPT)
        repos[side] = make_repo(base / side, tracker=tracker, agent=agent, agent_script=script,
                                stamps=stamps[side], agent_sleep=agent_sleep, gate=True)
        issues = Issues(repos[side], tracker)
        for issue_id, title, deps in items:
            issues.create(issue_id, title, deps=deps)
    result: dict[str, Any] = {"agent": agent, "issues": n, "dependent": sum(1 for *_, d in items if d),
                              "tracker": tracker, "max_sessions": 3}
    if agent == "command":
        result["agent_sleep_s"] = agent_sleep
    else:
        result["model_delay_s_per_answer"] = model_delay
    try:
        # beads-runner, three sessions
        renv = dict(env)
        cpu0 = children_cpu()
        daemon = Daemon(repos["runner"], renv, base / "runner.log", once=True).start()
        sampler = RssSampler(daemon.proc.pid, interval=0.25)
        sampler.start()
        code = daemon.wait()
        samples = sampler.stop()
        runner_wall = daemon.t_exit - daemon.t_spawn
        runner_cpu = children_cpu() - cpu0
        # the sequential loop
        benv = dict(env)
        out = base / "baseline.json"
        baseline_wall, base_data = run_baseline(repos["baseline"], benv, out)
        baseline_cpu = children_cpu() - cpu0 - runner_cpu
    finally:
        if server is not None:
            server.stop()
    runs = read_runs(repos["runner"])
    landed = [k for k, r in runs.items() if r["status"] == "succeeded"]
    result.update(runner_exit=code, runner_landed=len(landed), baseline_landed=len(base_data["issues"]),
                  runner_wall_s=runner_wall, baseline_wall_s=baseline_wall,
                  throughput_ratio=baseline_wall / runner_wall,
                  runner_retries=sum(r["retries"] for r in runs.values()),
                  runner_cpu_s=runner_cpu, baseline_cpu_s=baseline_cpu,
                  # With every core busy the runner cannot beat this ratio, whatever its slot use:
                  cpu_bound_ceiling=baseline_wall / max(runner_cpu / (os.cpu_count() or 1), 1e-9))
    # Agent intervals: the agent's own stamps (command) or the runner's session events (opencode).
    agent_iv: dict[str, tuple[float, float]] = {}
    for issue_id, run in runs.items():
        if agent == "command":
            s, e = read_stamps(stamps["runner"], issue_id), read_stamps(stamps["runner"], issue_id, "end")
            if s and e:
                agent_iv[issue_id] = (s[-1], e[-1])
        elif run.get("session_finished") and run.get("session_duration") is not None:
            # The session's own clock ends as it returns; "session starting" is logged before the
            # agent may wait for opencode's first-start lock, so it is not the start.
            agent_iv[issue_id] = (run["session_finished"] - run["session_duration"], run["session_finished"])
    result.update(runner_metrics(runs, agent_iv, items, daemon.t_spawn, daemon.t_exit, runner_wall))
    sessions = list(agent_iv.values())
    base_agent = [i["agent_end"] - i["agent_start"] for i in base_data["issues"]]
    result["baseline_overhead_per_issue_s"] = summary(
        [i["end"] - i["start"] - (i["agent_end"] - i["agent_start"]) for i in base_data["issues"]])
    result["baseline_agent_per_issue_s"] = summary(base_agent)
    result["baseline_wall_minus_agent_s"] = baseline_wall - sum(base_agent)
    # Memory with three sessions running (samples where three agent intervals cover the moment).
    three = [s for s in samples if sum(1 for a, b in sessions if a <= s["t"] < b) >= 3]
    result["rss_three_sessions"] = {
        "samples": len(three),
        "daemon_mb": summary([s["self_kb"] / 1024 for s in three]),
        "children_total_mb": summary([s["children_kb"] / 1024 for s in three]),
        "children_count": summary([s["children"] for s in three]),
        "largest_child_mb": max((max(s["child_kb"], default=0) for s in three), default=0) / 1024,
        "daemon_peak_mb": max((s["self_kb"] for s in samples), default=0) / 1024,
    }
    return result
