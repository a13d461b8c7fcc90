"""Benchmark: the embedded engine alone (LocalEngine, a toy 4-step workflow of no-op steps): runs per
second with a burst of runs, and step dispatch latency with one run at a time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.rig import wait_for
from bench.stats import in_ms, summary


def bench_engine(workdir: Path, burst: int = 200, sequential: int = 30) -> dict[str, Any]:
    from pydantic import BaseModel

    from workflows.local import LocalEngine
    from workflows.spec import StepSpec, WorkflowSpec

    class Inp(BaseModel):
        key: str

    class Out(BaseModel):
        ok: bool = True

    def noop(inp: Inp, ctx) -> Out:
        return Out()

    flow = WorkflowSpec(name="bench-noop", input=Inp, key=lambda inp: inp.key, steps=(
        StepSpec("a", noop, Out), StepSpec("b", noop, Out, parents=("a",), concurrency_key="slot"),
        StepSpec("c", noop, Out, parents=("b",)), StepSpec("d", noop, Out, parents=("c",))))
    result: dict[str, Any] = {"steps_per_run": 4}

    def make(db: Path) -> LocalEngine:  # the daemon's settings: 8 runs + 3 sessions of workers, poll 50 ms
        return LocalEngine(db, flow, max_sessions=3, workers=11, poll=0.05)

    # Burst: `burst` runs submitted, then the engine started; time until all succeeded.
    eng = make(workdir / "burst.db")
    t_submit = time.time()
    for i in range(burst):
        eng.submit(Inp(key=f"b{i}"))
    submit_s = time.time() - t_submit
    t0 = time.time()
    eng.start()
    try:
        wait_for(lambda: not eng.has_active_runs(), 600, "the burst", tick=0.01)
        elapsed = time.time() - t0
    finally:
        eng.stop()
    result["burst"] = {"runs": burst, "elapsed_s": elapsed, "runs_per_s": burst / elapsed,
                       "steps_per_s": 4 * burst / elapsed, "submit_ms_per_run": 1000 * submit_s / burst}

    # One run at a time: dispatch latency from the engine's own attempts table.
    eng = make(workdir / "seq.db")
    eng.start()
    run_ids = []
    try:
        for i in range(sequential):
            run_id, _ = eng.submit(Inp(key=f"s{i}"))
            wait_for(lambda r=run_id: eng.get_run(r).status == "succeeded", 60, "a run", tick=0.002)
            run_ids.append(run_id)
    finally:
        eng.stop()
    first, between, whole = [], [], []
    for run_id in run_ids:
        view = eng.get_run(run_id)
        atts = {a["step"]: a for a in eng.attempts(run_id)}
        first.append(atts["a"]["started_at"] - view.created_at)
        for p, c in (("a", "b"), ("b", "c"), ("c", "d")):
            between.append(atts[c]["started_at"] - atts[p]["finished_at"])
        whole.append(view.finished_at - view.created_at)
    result["sequential"] = {"runs": sequential, "submit_to_first_step_ms": in_ms(summary(first)),
                            "step_to_next_step_ms": in_ms(summary(between)), "run_ms": in_ms(summary(whole))}
    return result
