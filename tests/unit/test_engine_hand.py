"""The embedded engine and a person's hand, on a toy workflow: a parked step keeps its attempt, a
cancel request from another engine (another process) stops a run, and a failure handler that keeps
failing is given up on after its tries, with the handover recorded in the run."""

from __future__ import annotations

import threading
import time

from pydantic import BaseModel

from workflows.local import LocalEngine
from workflows.spec import RetryPolicy, StepFailed, StepParked, StepSpec, WorkflowSpec


class Inp(BaseModel):
    key: str
    mode: str = "ok"  # ok | park_once | block | fail


class Out(BaseModel):
    value: str = ""


class Toy:
    def __init__(self, handler_fails: bool = False):
        self.calls: list[tuple[str, int]] = []
        self.handled: list[tuple[str, str, str]] = []
        self.handler_tries = 0
        self.handler_fails = handler_fails
        self.started = threading.Event()

    def work(self, inp: Inp, ctx) -> Out:
        self.calls.append((inp.key, ctx.attempt))
        if inp.mode == "park_once" and len(self.calls) == 1:
            raise StepParked("provider quota", until=time.time() + 0.3)
        if inp.mode == "block":
            self.started.set()
            while not ctx.cancel.wait(0.01):
                pass
            raise StepFailed("session cancelled")
        if inp.mode == "fail":
            raise StepFailed("broken", retryable=False)
        return Out(value="done")

    def on_failure(self, inp, run_id, step, error, attempts) -> None:
        self.handler_tries += 1
        if self.handler_fails:
            raise RuntimeError("the tracker refused the comment")
        self.handled.append((inp.key, step, error.reason))

    def flow(self) -> WorkflowSpec:
        return WorkflowSpec(name="toy", input=Inp,
                            steps=(StepSpec("work", self.work, Out, concurrency_key="slot"),),
                            on_failure=self.on_failure, key=lambda inp: inp.key)


def make(tmp_path, toy: Toy, **kw) -> LocalEngine:
    return LocalEngine(tmp_path / "state.db", toy.flow(),
                       retry=RetryPolicy(attempts=3, backoff=0.01, factor=2.0, max_backoff=0.1), **kw)


def test_a_parked_step_waits_until_its_time_and_keeps_its_attempt(tmp_path):
    toy = Toy()
    eng = make(tmp_path, toy)
    eng.start()
    try:
        run_id, _ = eng.submit(Inp(key="p", mode="park_once"))
        view = eng.wait(run_id, timeout=30)
    finally:
        eng.stop()
    assert view.status == "succeeded"
    assert toy.calls == [("p", 1), ("p", 1)]  # the same attempt, twice: parking spent nothing
    assert any(e["event"] == "step parked" for e in eng.events(run_id))


def test_admission_keeps_a_session_pending_until_it_says_yes(tmp_path):
    toy = Toy()
    gate = {"open": False}
    asked = threading.Semaphore(0)

    def admit(key):
        asked.release()
        return gate["open"]

    eng = make(tmp_path, toy, admit=admit)
    eng.start()
    try:
        run_id, _ = eng.submit(Inp(key="a"))
        # The engine asked twice and was told no both times: the step is still pending, never run.
        assert asked.acquire(timeout=30) and asked.acquire(timeout=30)
        assert toy.calls == []
        assert [(s.status, s.attempt) for s in eng.get_run(run_id).steps] == [("pending", 0)]
        gate["open"] = True
        view = eng.wait(run_id, timeout=30)
    finally:
        eng.stop()
    assert view.status == "succeeded" and toy.calls == [("a", 1)]


def test_a_cancel_request_from_another_engine_stops_the_running_step_and_runs_the_handler(tmp_path):
    toy = Toy()
    runner = make(tmp_path, toy)
    runner.start()
    try:
        run_id, _ = runner.submit(Inp(key="c", mode="block"))
        assert toy.started.wait(30)
        other = make(tmp_path, Toy())  # as `beads-runner cancel` does, from its own process
        assert other.request_cancel(run_id, "alice")
        view = runner.wait(run_id, timeout=30)
    finally:
        runner.stop()
    assert view.status == "failed" and view.error == "cancelled by alice"
    assert toy.calls == [("c", 1)]  # not retried
    assert toy.handled == [("c", "work", "cancelled by alice")]


def test_cancelling_a_run_nobody_runs_fails_it_at_once(tmp_path):
    toy = Toy()
    eng = make(tmp_path, toy)  # never started: no runner is running
    run_id, _ = eng.submit(Inp(key="q"))
    assert eng.request_cancel(run_id, "bob")
    view = eng.get_run(run_id)
    assert view.status == "failed" and view.error == "cancelled by bob" and toy.calls == []
    assert toy.handled == [("q", "work", "cancelled by bob")]
    assert not eng.request_cancel(run_id, "bob")  # no longer active


def test_a_failure_handler_that_keeps_failing_is_given_up_on_and_recorded(tmp_path):
    toy = Toy(handler_fails=True)
    eng = make(tmp_path, toy, handler_attempts=3, handler_backoff=0.05)
    eng.start()
    try:
        run_id, _ = eng.submit(Inp(key="f", mode="fail"))
        view = eng.wait(run_id, timeout=30)
    finally:
        eng.stop()
    assert view.status == "failed" and toy.handler_tries == 3
    assert view.handler_error == "the tracker refused the comment"
    assert not eng.has_active_runs()
