"""The embedded engine on toy workflows: parents before children, retries with backoff, the cap, resume, failure."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import BaseModel

from workflows.local import LocalEngine
from workflows.spec import RetryPolicy, StepFailed, StepSpec, WorkflowSpec


class Inp(BaseModel):
    key: str
    fail_times: int = 0
    retryable: bool = True
    sleep: float = 0.0


class Out(BaseModel):
    value: str


calls: list[tuple[str, str, int]] = []
lock = threading.Lock()
active = {"now": 0, "max": 0}
failures: list[tuple[str, str, str, int]] = []


def _step(name):
    def fn(inp: Inp, ctx) -> Out:
        with lock:
            calls.append((inp.key, name, ctx.attempt))
        if name == "b":
            with lock:
                active["now"] += 1
                active["max"] = max(active["max"], active["now"])
            try:
                deadline = time.monotonic() + inp.sleep
                while time.monotonic() < deadline and not ctx.cancel.is_set():
                    time.sleep(0.01)
            finally:
                with lock:
                    active["now"] -= 1
            if ctx.cancel.is_set():
                raise StepFailed("cancelled")
            if ctx.attempt <= inp.fail_times:
                raise StepFailed(f"b fails on attempt {ctx.attempt}", retryable=inp.retryable, detail="tail")
        parent = ctx.parent({"b": "a", "c": "b"}[name]).value if name != "a" else ""
        return Out(value=parent + name)

    return fn


def make_flow():
    return WorkflowSpec(
        name="toy",
        input=Inp,
        steps=(
            StepSpec("a", _step("a"), Out),
            StepSpec("b", _step("b"), Out, parents=("a",), concurrency_key="slot"),
            StepSpec("c", _step("c"), Out, parents=("b",)),
        ),
        on_failure=lambda inp, run_id, step, err, attempts: failures.append((inp.key, step, err.reason, attempts)),
        key=lambda inp: inp.key,
    )


@pytest.fixture(autouse=True)
def _reset():
    calls.clear()
    failures.clear()
    active.update(now=0, max=0)


def engine(tmp_path, **kw):
    kw.setdefault("retry", RetryPolicy(attempts=3, backoff=0.05, factor=2.0, max_backoff=1.0))
    return LocalEngine(tmp_path / "state.db", make_flow(), **kw)


def test_a_step_starts_only_after_all_its_parents_and_reads_each_parents_output(tmp_path):
    """A diamond: a -> (b, c) -> d. c reads a (not the
    step before it), d reads both b and c; each step starts after every parent finished."""
    seen: dict[str, str] = {}

    def step(name, parents):
        def fn(inp: Inp, ctx) -> Out:
            got = "+".join(ctx.parent(p).value for p in parents)
            seen[name] = got
            return Out(value=f"{name}({got})" if parents else name)
        return fn

    flow = WorkflowSpec(name="diamond", input=Inp, key=lambda inp: inp.key, steps=(
        StepSpec("a", step("a", ()), Out),
        StepSpec("b", step("b", ("a",)), Out, parents=("a",)),
        StepSpec("c", step("c", ("a",)), Out, parents=("a",)),
        StepSpec("d", step("d", ("b", "c")), Out, parents=("b", "c")),
    ))
    eng = LocalEngine(tmp_path / "state.db", flow, retry=RetryPolicy(attempts=1, backoff=0.01))
    eng.start()
    try:
        run_id, created = eng.submit(Inp(key="k1"))
        view = eng.wait(run_id, timeout=60)
    finally:
        eng.stop()
    assert created and view.status == "succeeded", view
    assert seen == {"a": "", "b": "a", "c": "a", "d": "b(a)+c(a)"}
    assert view.outcome == {"value": "d(b(a)+c(a))"}
    times = {a["step"]: (a["started_at"], a["finished_at"]) for a in eng.attempts(run_id)}
    for child, parents in {"b": "a", "c": "a", "d": "bc"}.items():
        for parent in parents:
            assert times[child][0] >= times[parent][1], f"{child} started before its parent {parent} finished"


def test_one_active_run_per_key(tmp_path):
    eng = engine(tmp_path)
    first, created1 = eng.submit(Inp(key="same"))
    second, created2 = eng.submit(Inp(key="same"))
    assert (created1, created2) == (True, False)
    assert first == second


def test_retryable_failure_is_retried_with_backoff_then_succeeds(tmp_path):
    eng = engine(tmp_path)
    eng.start()
    try:
        run_id, _ = eng.submit(Inp(key="flaky", fail_times=2))
        view = eng.wait(run_id, timeout=10)
    finally:
        eng.stop()
    assert view.status == "succeeded"
    assert [c for c in calls if c[1] == "b"] == [("flaky", "b", 1), ("flaky", "b", 2), ("flaky", "b", 3)]
    attempts = [a for a in eng.attempts(run_id) if a["step"] == "b"]
    assert [a["status"] for a in attempts] == ["failed", "failed", "succeeded"]
    gaps = [attempts[i + 1]["started_at"] - attempts[i]["finished_at"] for i in range(2)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # 0.05 s, then doubled


def test_exhausted_retries_fail_the_run_and_call_the_failure_handler_once(tmp_path):
    eng = engine(tmp_path)
    eng.start()
    try:
        run_id, _ = eng.submit(Inp(key="doomed", fail_times=99))
        view = eng.wait(run_id, timeout=10)
    finally:
        eng.stop()
    assert view.status == "failed"
    assert view.failed_step == "b"
    assert failures == [("doomed", "b", "b fails on attempt 3", 3)]
    assert not [c for c in calls if c[1] == "c"]


def test_non_retryable_failure_stops_at_once(tmp_path):
    eng = engine(tmp_path)
    eng.start()
    try:
        run_id, _ = eng.submit(Inp(key="fatal", fail_times=99, retryable=False))
        view = eng.wait(run_id, timeout=10)
    finally:
        eng.stop()
    assert view.status == "failed"
    assert [c for c in calls if c[1] == "b"] == [("fatal", "b", 1)]
    assert failures[0][3] == 1


def test_concurrency_cap_holds_and_is_filled(tmp_path):
    """Seven runs, cap 3: three sessions start and hold; while they hold, the dispatcher weighs the
    four others (admission is asked for them, twice over) and starts none; released, all finish."""
    release, cond = threading.Event(), threading.Condition()
    state = {"now": 0, "max": 0, "asked": 0}

    def session(inp: Inp, ctx) -> Out:
        with cond:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            cond.notify_all()
        try:
            release.wait(60)
        finally:
            with cond:
                state["now"] -= 1
        return Out(value="done")

    def admit(key):
        with cond:
            state["asked"] += 1
            cond.notify_all()
        return True

    flow = WorkflowSpec(name="capped", input=Inp, key=lambda inp: inp.key,
                        steps=(StepSpec("s", session, Out, concurrency_key="slot"),))
    eng = LocalEngine(tmp_path / "state.db", flow, max_sessions=3, workers=8, admit=admit,
                      retry=RetryPolicy(attempts=1, backoff=0.01))
    eng.start()
    try:
        ids = [eng.submit(Inp(key=f"k{i}"))[0] for i in range(7)]
        with cond:
            assert cond.wait_for(lambda: state["now"] == 3, timeout=60), state
            asked = state["asked"]
            assert cond.wait_for(lambda: state["asked"] >= asked + 8, timeout=60), state
        assert state["now"] == 3 and eng.sessions_in_use("slot") == 3
        release.set()
        views = [eng.wait(r, timeout=60) for r in ids]
    finally:
        release.set()
        eng.stop()
    assert all(v.status == "succeeded" for v in views)
    assert state["max"] == 3


def test_step_timeout_cancels_and_counts_as_a_failed_attempt(tmp_path):
    eng = engine(tmp_path, step_timeouts={"b": 0.2}, retry=RetryPolicy(attempts=2, backoff=0.01))
    eng.start()
    try:
        run_id, _ = eng.submit(Inp(key="slow", sleep=30))
        view = eng.wait(run_id, timeout=15)
    finally:
        eng.stop()
    assert view.status == "failed"
    assert "timed out" in view.error
    assert len([c for c in calls if c[1] == "b"]) == 2


def test_stop_interrupts_without_spending_an_attempt_and_a_new_engine_resumes(tmp_path):
    eng = engine(tmp_path)
    eng.start()
    run_id, _ = eng.submit(Inp(key="resume", sleep=30))
    deadline = time.monotonic() + 10
    while eng.sessions_in_use("slot") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    eng.stop(grace=0.1)
    step_b = next(s for s in eng.get_run(run_id).steps if s.name == "b")
    assert (step_b.status, step_b.attempt) == ("pending", 0)

    calls.clear()
    resumed = LocalEngine(tmp_path / "state.db", make_flow(), retry=RetryPolicy(backoff=0.01))
    resumed.start()
    try:
        deadline = time.monotonic() + 60  # b runs again (it sleeps 30 s): wait until its function runs
        while not calls and time.monotonic() < deadline:
            time.sleep(0.02)
        step_b = next(s for s in resumed.get_run(run_id).steps if s.name == "b")
        assert (step_b.status, step_b.attempt) == ("running", 1)  # the interrupted try was not spent
        assert [c[1:] for c in calls] == [("b", 1)]  # a was not run again
    finally:
        resumed.stop()


def test_orphaned_step_of_a_dead_owner_is_resumed_and_a_live_owners_is_not(tmp_path):
    import os
    import socket

    from tests.helpers import dead_pid

    eng = engine(tmp_path)
    run_id, _ = eng.submit(Inp(key="orphan"))
    db = eng._conn()

    def held_by(pid: int) -> None:  # step a held by a runner with this pid, its lease an hour ahead
        db.execute("UPDATE steps SET status='running', attempt=1, owner=?, lease_until=? "
                   "WHERE run_id=? AND name='a'", (f"{socket.gethostname()}:{pid}:other", time.time() + 3600, run_id))

    def step_a():
        return next(s for s in eng.get_run(run_id).steps if s.name == "a")

    held_by(os.getpid())  # alive (this very process, as another engine in it): its lease stands
    eng._recover_orphans()
    assert (step_a().status, step_a().attempt) == ("running", 1)
    held_by(dead_pid())  # a runner that died holding it
    eng._recover_orphans()
    assert (step_a().status, step_a().attempt) == ("pending", 0)  # back, the interrupted try not spent
    assert any(e["event"] == "step resumed" for e in eng.events(run_id))
    eng.start()
    try:
        view = eng.wait(run_id, timeout=60)
    finally:
        eng.stop()
    assert view.status == "succeeded"
    assert step_a().attempt == 1


def test_a_step_outcome_the_full_disk_refused_is_recorded_once_space_is_back(tmp_path, monkeypatch):
    """Issue 17 item 12: a brief disk-full under .beads-runner/ left steps "running" under the live
    daemon (its lease renewed), and nothing moved once space was back."""
    import sqlite3

    eng = engine(tmp_path)
    real = eng._step_succeeded
    refusals = {"left": 3}

    def disk_full_for_a_while(*args):
        if refusals["left"] > 0:
            refusals["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real(*args)

    monkeypatch.setattr(eng, "_step_succeeded", disk_full_for_a_while)
    eng.start()
    try:
        run_id, _ = eng.submit(Inp(key="full"))
        view = eng.wait(run_id, timeout=60)
    finally:
        eng.stop()
    assert refusals["left"] == 0
    assert view.status == "succeeded" and [s.status for s in view.steps] == ["succeeded"] * 3
    assert [c[1] for c in calls] == ["a", "b", "c"]  # each step ran once: only its record was retried


def test_a_deferred_step_waits_without_spending_an_attempt(tmp_path):
    """Issue 17 item 11: a worktree held by another runner's (stopped) agent defers the step; it is
    tried again later, never failed for it, whatever the number of attempts."""
    from workflows.spec import StepDeferred

    held = {"times": 3}

    def busy_then_free(inp: Inp, ctx) -> Out:
        if held["times"] > 0:
            held["times"] -= 1
            raise StepDeferred("another runner still works in the worktree", delay=0.05)
        return Out(value="done")

    flow = WorkflowSpec(name="defer", input=Inp, steps=(StepSpec("only", busy_then_free, Out),),
                        key=lambda inp: inp.key)
    eng = LocalEngine(tmp_path / "state.db", flow, retry=RetryPolicy(attempts=1, backoff=0.05))
    eng.start()
    try:
        run_id, _ = eng.submit(Inp(key="held"))
        view = eng.wait(run_id, timeout=60)
    finally:
        eng.stop()
    assert held["times"] == 0 and view.status == "succeeded"
