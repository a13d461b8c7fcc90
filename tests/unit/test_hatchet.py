"""The Hatchet backend by contract: registration (`to_proto`), the tasks (`aio_mock_run`) calling the
same step functions as the embedded engine, failures and cancellation, the worker and the client.

No engine and no network: the client is built from a syntactically valid fake token."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import signal
import threading
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from beads_runner.config import Config
from beads_runner.errors import RunnerError
from beads_runner.services import Services, register_services
from beads_runner.tracker.base import Issue
from workflows import hatchet as hb
from workflows.spec import StepFailed
from workflows.task_flow import TASK_FLOW, CheckDepsOutput, CommitOutput, ProcessOutput, TaskInput, VerifyOutput

TENANT = "707d0855-80ab-4e1f-a156-f1c4546cbf52"


def fake_token(**claims) -> str:
    def b64(data) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    body = {"sub": TENANT, "server_url": "http://localhost:8888", "grpc_broadcast_address": "localhost:7077", **claims}
    return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(body)}.c2ln"


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ClientConfig reads .env files in the cwd
    for var in ("HATCHET_CLIENT_HOST_PORT", "HATCHET_CLIENT_SERVER_URL", "HATCHET_CLIENT_NAMESPACE",
                "HATCHET_CLIENT_TLS_SERVER_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN", fake_token())
    monkeypatch.setenv("HATCHET_CLIENT_TLS_STRATEGY", "none")
    monkeypatch.setenv("HATCHET_CLIENT_TENACITY_MAX_ATTEMPTS", "1")


class RecordingChannel:
    def __init__(self, ctx=None):
        self.logs: list[dict] = []
        self.streams: list[dict] = []
        self.refreshes: list[float] = []

    def log(self, line: str) -> None:
        self.logs.append(json.loads(line))

    def stream(self, data: str) -> None:
        self.streams.append(json.loads(data))

    def refresh(self, seconds: float) -> None:
        self.refreshes.append(seconds)


def build(config: Config | None = None, **kw):
    return hb.build_workflow(hb.make_client(), config or Config(), **kw)


def dump(model: BaseModel) -> dict:
    return model.model_dump(mode="json")


# --- registration --------------------------------------------------------------------------------------
def test_registration_follows_the_spec_and_the_config():
    from hatchet_sdk.contracts.v1.workflows_pb2 import ConcurrencyLimitStrategy, IdempotencyMethod

    cfg = Config(engine={"max_sessions": 5, "max_runs": 4, "retry": {"attempts": 4, "backoff_max": "45s"},
                         "step_timeout": "20m"},
                 agent={"timeout": "40m"}, gates=[{"name": "t", "run": "pytest", "timeout": "5m"}])
    proto = build(cfg).to_proto()
    assert proto.name == TASK_FLOW.name == "beads-task-execution"
    tasks = {t.readable_id: t for t in proto.tasks}
    assert list(tasks) == [s.name for s in TASK_FLOW.steps] == ["check-deps", "process", "verify", "commit"]
    # Each step waits for the spec's parents (and declares the ancestors whose outputs it reads).
    assert list(tasks["check-deps"].parents) == []
    assert list(tasks["process"].parents) == ["check-deps"]
    assert list(tasks["verify"].parents) == ["check-deps", "process"]
    assert list(tasks["commit"].parents) == ["check-deps", "process", "verify"]
    for spec in TASK_FLOW.steps:
        assert set(spec.parents) <= set(tasks[spec.name].parents)
        t = tasks[spec.name]
        assert t.retries == 3  # 4 attempts = the first try + 3 retries
        assert t.backoff_factor == 2.0 and t.backoff_max_seconds == 45
        assert t.action == f"beads-task-execution:{spec.name}"
    assert tasks["check-deps"].timeout == "20m"  # no spec timeout: engine.step_timeout
    # The whole fix loop: max_attempts (3) × (agent.timeout 40m + the gates 5m + the diff checks 60 s), + 60 s
    assert tasks["process"].timeout == "139m"
    assert tasks["verify"].timeout == "7m"  # the gates (5m), the diff checks (60 s), + 60 s
    assert tasks["commit"].timeout == "20m"
    # The session cap: one concurrency group for every session, max_sessions at once, queued for hours.
    (conc,) = tasks["process"].concurrency
    assert conc.expression == "'opencode'" and conc.max_runs == 5
    assert conc.limit_strategy == ConcurrencyLimitStrategy.Value("GROUP_ROUND_ROBIN")
    assert tasks["process"].schedule_timeout == "24h"
    for name in ("check-deps", "verify", "commit"):
        assert list(tasks[name].concurrency) == []
        assert tasks[name].schedule_timeout == "1h"
    assert list(tasks["process"].rate_limits) == []  # sessions_per_minute unset
    assert proto.on_failure_task.readable_id == "handover-on-failure"
    assert proto.on_failure_task.retries == 3
    # Keys are tenant-wide: scoped to the repository's namespace, so two repositories never collide.
    ns = hb.make_client().config.namespace
    assert proto.idempotency.expression == f"'{ns}' + ':' + input.issue_id"
    # Steps after check-deps are skipped by the engine when it says the run is not ours: no session slot.
    for name in ("process", "verify", "commit"):
        (cond,) = tasks[name].conditions.parent_override_conditions
        assert (cond.parent_readable_id, cond.base.expression) == ("check-deps", "output.proceed == false")
    assert not tasks["check-deps"].conditions.parent_override_conditions
    # Equal policies give an equal definition (its version), so workers never register a second one.
    assert proto.description == hb.DEFINITION_PREFIX + hb.definition_version(TASK_FLOW, cfg)
    assert hb.definition_version(TASK_FLOW, cfg) != hb.definition_version(TASK_FLOW, Config())
    again = build(cfg).to_proto()
    assert again.SerializeToString(deterministic=True) == proto.SerializeToString(deterministic=True)
    assert proto.idempotency.method == IdempotencyMethod.Value("STATUS")
    assert proto.idempotency.ttl_ms >= 24 * 3600 * 1000
    assert json.loads(proto.input_json_schema)["required"] == ["issue_id", "repo"]


def test_sessions_per_minute_adds_a_rate_limit_on_process_only():
    proto = build(Config(engine={"sessions_per_minute": 6})).to_proto()
    tasks = {t.readable_id: t for t in proto.tasks}
    (limit,) = tasks["process"].rate_limits
    assert limit.key == hb.RATE_LIMIT_KEY and limit.units == 1
    assert all(not tasks[n].rate_limits for n in ("check-deps", "verify", "commit"))


# --- the tasks call the same step functions ----------------------------------------------------------
class FakeTracker:
    actor = "beads-runner"

    def __init__(self, issue: Issue):
        self.issue = issue
        self.calls: list[tuple] = []

    def show(self, issue_id):
        self.calls.append(("show", issue_id))
        return self.issue

    def claim(self, issue_id):
        self.calls.append(("claim", issue_id))
        self.issue = self.issue.model_copy(update={"status": "in_progress", "assignee": self.actor})
        return self.issue

    def release(self, issue_id):
        self.calls.append(("release", issue_id))

    def comment(self, issue_id, text):
        self.calls.append(("comment", issue_id, text))

    def hand_to_human(self, issue_id):
        self.calls.append(("hand_to_human", issue_id))


class DirectContext:
    """The minimum the embedded engine gives a step, for calling step functions directly."""

    def __init__(self, parents: dict[str, BaseModel], run_id="run-direct", attempt=1):
        self.run_id, self.attempt, self.cancel = run_id, attempt, threading.Event()
        self._parents = parents

    def parent(self, step):
        return self._parents[step]

    def log(self, event, **fields):
        pass

    def note(self, **fields):
        pass


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path


def _services(repo: Path, issue: Issue) -> Services:
    return register_services(Services(repo.resolve(), Config(), tracker_override=FakeTracker(issue)))


def _spied_flow(calls: list):
    def spy(spec):
        def fn(inp, ctx):
            calls.append((spec.name, spec.fn))
            return spec.fn(inp, ctx)

        return dataclasses.replace(spec, fn=fn)

    return dataclasses.replace(TASK_FLOW, steps=tuple(spy(s) for s in TASK_FLOW.steps))


@pytest.mark.parametrize("issue_kw", [
    {"status": "open", "issue_type": "task"},  # claimed and worked on
    {"status": "in_progress", "assignee": "someone-else", "issue_type": "task"},  # not ours: skipped
])
def test_each_task_runs_the_same_step_function_with_the_same_result(repo, issue_kw):
    issue = Issue(id="bd-1", title="Add a thing", **issue_kw)
    inp = TaskInput(issue_id="bd-1", repo=str(repo))
    calls: list = []
    wf = build(flow=_spied_flow(calls), channel=RecordingChannel)
    tasks = wf.beads_tasks

    _services(repo, issue)
    got_deps = asyncio.run(tasks["check-deps"].aio_mock_run(inp))
    _services(repo, issue)  # afresh: the direct call sees the tracker as the task did
    want_deps = TASK_FLOW.step("check-deps").fn(inp, DirectContext({}))
    assert isinstance(got_deps, CheckDepsOutput) and got_deps == want_deps
    assert calls == [("check-deps", TASK_FLOW.step("check-deps").fn)]
    if got_deps.proceed:
        assert got_deps.issue.status == "in_progress"
        return  # process needs git and an agent: covered by the contract tests below
    parents = {"check-deps": dump(got_deps)}
    got_proc = asyncio.run(tasks["process"].aio_mock_run(inp, parent_outputs=parents))
    assert got_proc == TASK_FLOW.step("process").fn(inp, DirectContext({"check-deps": want_deps}))
    assert isinstance(got_proc, ProcessOutput) and got_proc.no_work
    parents["process"] = dump(got_proc)
    got_ver = asyncio.run(tasks["verify"].aio_mock_run(inp, parent_outputs=parents))
    assert isinstance(got_ver, VerifyOutput) and got_ver.no_work
    parents["verify"] = dump(got_ver)
    got_commit = asyncio.run(tasks["commit"].aio_mock_run(inp, parent_outputs=parents))
    want_commit = TASK_FLOW.step("commit").fn(inp, DirectContext(
        {"check-deps": want_deps, "process": got_proc, "verify": got_ver}))
    assert isinstance(got_commit, CommitOutput) and got_commit == want_commit
    assert got_commit.no_work and "not ours" in got_commit.reason
    assert [c[0] for c in calls] == ["check-deps", "process", "verify", "commit"]
    assert all(fn is TASK_FLOW.step(name).fn for name, fn in calls)


def _toy_flow(process_fn, on_failure=None):
    return dataclasses.replace(
        TASK_FLOW,
        steps=tuple(dataclasses.replace(s, fn=process_fn) if s.name == "process" else s for s in TASK_FLOW.steps),
        on_failure=on_failure or TASK_FLOW.on_failure)


def test_step_context_adapter_gives_parents_ids_attempt_logs_and_notes():
    seen = {}

    def process(inp, ctx):
        seen.update(run_id=ctx.run_id, attempt=ctx.attempt, deps=ctx.parent("check-deps"),
                    thread=threading.current_thread().name)
        ctx.log("session starting", worktree="/w")
        ctx.note(session_id="ses_1", tokens=12)
        return ProcessOutput(session_id="ses_1", summary="done", changed_files=["a.py"])

    channel = RecordingChannel()
    wf = build(flow=_toy_flow(process), channel=lambda ctx: channel)
    deps = CheckDepsOutput(proceed=True, issue=Issue(id="bd-2", title="t", status="in_progress"))
    out = asyncio.run(wf.beads_tasks["process"].aio_mock_run(
        TaskInput(issue_id="bd-2", repo="/r"), parent_outputs={"check-deps": dump(deps)}, retry_count=2))
    assert out == ProcessOutput(session_id="ses_1", summary="done", changed_files=["a.py"])
    assert seen["attempt"] == 3  # retry_count + 1
    assert seen["deps"] == deps and isinstance(seen["deps"], CheckDepsOutput)
    assert seen["run_id"] and seen["thread"].startswith("beads-step")  # a step thread, not the event loop
    assert channel.logs == [{"event": "session starting", "worktree": "/w"}]
    assert channel.streams == [{"step": "process", "attempt": 3, "session_id": "ses_1", "tokens": 12}]


def test_non_retryable_step_failure_becomes_non_retryable_exception():
    from hatchet_sdk.exceptions import NonRetryableException

    def process(inp, ctx):
        raise StepFailed("quality gates failed: t", retryable=False, detail="line 1\nline 2")

    wf = build(flow=_toy_flow(process), channel=RecordingChannel)
    with pytest.raises(NonRetryableException) as info:
        asyncio.run(wf.beads_tasks["process"].aio_mock_run(
            TaskInput(issue_id="bd-3", repo="/r"), parent_outputs={"check-deps": {"proceed": True}}))
    error, attempt = hb.decode_failure(str(info.value))
    assert (error.reason, error.detail, error.retryable, attempt) == ("quality gates failed: t", "line 1\nline 2",
                                                                      False, 1)


def test_retryable_step_failure_is_retried_by_hatchet():
    from hatchet_sdk.exceptions import NonRetryableException

    def process(inp, ctx):
        raise StepFailed("agent session failed: stalled", retryable=True)

    wf = build(flow=_toy_flow(process), channel=RecordingChannel)
    with pytest.raises(Exception) as info:
        asyncio.run(wf.beads_tasks["process"].aio_mock_run(
            TaskInput(issue_id="bd-3", repo="/r"), parent_outputs={"check-deps": {"proceed": True}}))
    assert not isinstance(info.value, NonRetryableException)
    assert hb.decode_failure(str(info.value))[0].reason == "agent session failed: stalled"


def test_a_parked_step_waits_in_place_and_runs_again_without_spending_a_try(monkeypatch):
    from workflows.spec import StepParked

    monkeypatch.setattr("workflows.hatchet.workflow.WAIT_STEP", 0.05)
    calls, admitted = [], []

    def process(inp, ctx):
        calls.append((time.time(), ctx.attempt))
        if len(calls) == 1:
            raise StepParked("parked: quota of scripted", until=time.time() + 0.3)
        return ProcessOutput(summary="done after the park")

    def admit(key):
        admitted.append(key)
        return len(admitted) > 2  # the park is still in force the first two times it is asked

    wf = build(flow=_toy_flow(process), channel=RecordingChannel, admit=admit)
    out = asyncio.run(wf.beads_tasks["process"].aio_mock_run(
        TaskInput(issue_id="bd-9", repo="/r"), parent_outputs={"check-deps": {"proceed": True}}))
    assert out.summary == "done after the park"
    assert [a for _, a in calls] == [1, 1]  # one task attempt: the park spent no try
    assert calls[1][0] - calls[0][0] >= 0.3  # not before the park's end
    assert admitted and set(admitted) == {TASK_FLOW.step("process").concurrency_key}


def test_cancelling_process_sets_the_cancel_event_and_the_step_stops():
    started, stopped = threading.Event(), threading.Event()
    ctxs = []

    def process(inp, ctx):
        ctxs.append(ctx)
        started.set()
        if ctx.cancel.wait(60):  # the agent would kill its process group here
            stopped.set()
            raise StepFailed("agent session failed: cancelled")
        return ProcessOutput()

    wf = build(flow=_toy_flow(process), channel=RecordingChannel)

    async def scenario():
        task = asyncio.ensure_future(wf.beads_tasks["process"].aio_mock_run(
            TaskInput(issue_id="bd-4", repo="/r"), parent_outputs={"check-deps": {"proceed": True}}))
        while not started.is_set():
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t0

    elapsed = asyncio.run(scenario())
    assert ctxs[0].cancel.is_set() and stopped.is_set()
    assert elapsed < 30  # it waited for the step to wind down, not for the 60 s


def test_process_refreshes_its_timeout_while_the_session_runs():
    channel = RecordingChannel()

    def process(inp, ctx):  # the session runs until two refreshes went out (or a minute passed)
        deadline = time.monotonic() + 60
        while len(channel.refreshes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        return ProcessOutput()

    wf = build(flow=_toy_flow(process), channel=lambda ctx: channel, refresh_every=0.1)
    asyncio.run(wf.beads_tasks["process"].aio_mock_run(
        TaskInput(issue_id="bd-5", repo="/r"), parent_outputs={"check-deps": {"proceed": True}}))
    assert len(channel.refreshes) >= 2 and set(channel.refreshes) == {0.1}


def test_refresh_failures_do_not_fail_the_step():
    """Each refresh raises (a broken channel; the real channel over a context whose refresh_timeout
    raises, as with no engine): the session runs on until two refreshes were tried, and succeeds."""
    tried: list[float] = []

    class Broken(RecordingChannel):
        def refresh(self, seconds):
            tried.append(seconds)
            raise RuntimeError("no network")

    class NoEngine:
        def refresh_timeout(self, delta):
            tried.append(delta.total_seconds())
            raise ConnectionError("engine unreachable")

    def process(inp, ctx):  # the session lasts until two refreshes were tried (or a minute)
        deadline = time.monotonic() + 60
        while len(tried) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        return ProcessOutput(summary="ok")

    for channel in (Broken, lambda ctx: hb.HatchetChannel(NoEngine())):
        tried.clear()
        wf = build(flow=_toy_flow(process), channel=channel, refresh_every=0.1)
        out = asyncio.run(wf.beads_tasks["process"].aio_mock_run(
            TaskInput(issue_id="bd-6", repo="/r"), parent_outputs={"check-deps": {"proceed": True}}))
        assert out.summary == "ok"
        assert len(tried) >= 2, f"{channel}: the refresh was never tried"
    tried.clear()
    hb.HatchetChannel(NoEngine()).refresh(90)  # the real channel contains the failure itself
    assert tried == [90.0]


def test_on_failure_calls_the_same_handler_with_the_failed_step_and_error():
    handled = []
    wf = build(flow=_toy_flow(TASK_FLOW.step("process").fn,
                              on_failure=lambda *args: handled.append(args)), channel=RecordingChannel)
    task = wf._on_failure_task
    inp = TaskInput(issue_id="bd-7", repo="/r")
    ctx = task._create_mock_context(inp)
    encoded = hb.encode_failure(StepFailed("quality gates failed: t", retryable=False, detail="E1\nE2"), 2)
    # As the engine stores it: the SDK's serialized error (type, message, traceback, metadata).
    from hatchet_sdk.exceptions import NonRetryableException, TaskRunError

    stored = TaskRunError.from_exception(NonRetryableException(encoded), "tr-1").serialize(include_metadata=True)
    ctx._data.step_run_errors = {"verify": stored}
    out = asyncio.run(task.aio_call(ctx))
    ((got_inp, run_id, step, error, attempts),) = handled
    assert got_inp == inp and run_id == ctx.workflow_run_id and step == "verify" and attempts == 2
    assert (error.reason, error.detail) == ("quality gates failed: t", "E1\nE2")
    assert out == hb.FailureOutput(step="verify", reason="quality gates failed: t", attempts=2)


def test_the_default_workflow_hands_a_failed_issue_to_a_person(tmp_path):
    """build() without a flow registers TASK_FLOW's handover: the failed issue gets a comment saying
    where and why the run failed, and is handed to a person (blocked, needs-human)."""
    from hatchet_sdk.exceptions import NonRetryableException, TaskRunError

    from beads_runner.tracker.base import NEEDS_HUMAN_LABEL
    from beads_runner.tracker.jsonl import JsonlTracker
    from tests.helpers import new_repo

    repo = new_repo(tmp_path / "repo")
    (repo / ".beads").mkdir()
    (repo / ".beads" / "issues.jsonl").write_text("")
    tracker = JsonlTracker(repo)
    tracker.create("Work", id="bd-8")
    tracker.claim("bd-8")
    register_services(Services(repo.resolve(), Config(), tracker_override=tracker))
    task = build()._on_failure_task
    inp = TaskInput(issue_id="bd-8", repo=str(repo.resolve()))
    ctx = task._create_mock_context(inp)
    encoded = hb.encode_failure(StepFailed("quality gates failed: t", retryable=False, detail="E1"), 3)
    ctx._data.step_run_errors = {
        "verify": TaskRunError.from_exception(NonRetryableException(encoded), "tr-1").serialize(include_metadata=True)}
    out = asyncio.run(task.aio_call(ctx))
    assert out == hb.FailureOutput(step="verify", reason="quality gates failed: t", attempts=3)
    issue = tracker.show("bd-8")
    assert issue.status == "blocked" and NEEDS_HUMAN_LABEL in issue.labels
    [comment] = tracker.comments("bd-8")
    text = comment["text"]
    assert "failed at step verify after 3 attempt(s): quality gates failed: t" in text and "E1" in text


def test_engine_timeouts_decode_to_their_first_line():
    error, attempt = hb.decode_failure("TimeoutError: task exceeded its 31m execution timeout\nTraceback...")
    assert error.reason == "TimeoutError: task exceeded its 31m execution timeout" and attempt is None


# --- the worker and the client ---------------------------------------------------------------------
def test_worker_has_the_workflow_and_enough_slots(repo):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        svc = Services(repo.resolve(), Config(engine={"max_sessions": 3, "max_runs": 5}))
        worker, wf = hb.build_worker(svc, name="w1")
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert hb.worker_slots(svc.config) == 8
    assert worker.slot_config["default"] == 8
    assert worker.name.endswith("w1")  # Hatchet prefixes it with the namespace
    assert wf.name.endswith("beads-task-execution")  # after the repository's namespace
    assert worker._workflows == [wf]


@pytest.mark.parametrize("token, words", [
    (None, "HATCHET_CLIENT_TOKEN is not set"),
    ("not-a-jwt", "not a valid Hatchet API token"),
    ("eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.sig", "not a valid Hatchet API token"),
])
def test_a_missing_or_invalid_token_says_how_to_fix_it(monkeypatch, token, words):
    if token is None:
        monkeypatch.delenv("HATCHET_CLIENT_TOKEN")
    else:
        monkeypatch.setenv("HATCHET_CLIENT_TOKEN", token)
    with pytest.raises(RunnerError) as info:
        hb.make_client()
    assert words in info.value.message
    for var in ("HATCHET_CLIENT_TOKEN", "HATCHET_CLIENT_HOST_PORT", "HATCHET_CLIENT_TLS_STRATEGY=none"):
        assert var in info.value.fix
    with pytest.raises(RunnerError):
        hb.check_hatchet_config()


def test_doctor_reports_tenant_host_and_tls():
    text = hb.check_hatchet_config()
    assert TENANT in text and "localhost:7077" in text and "TLS none" in text


def test_doctor_refuses_tls_against_a_local_engine(monkeypatch):
    monkeypatch.setenv("HATCHET_CLIENT_TLS_STRATEGY", "tls")
    with pytest.raises(RunnerError) as info:
        hb.check_hatchet_config()
    assert "HATCHET_CLIENT_TLS_STRATEGY=none" in info.value.fix


# --- `start` on Hatchet: the engine adapter ----------------------------------------------------------
class FakeRef:
    def __init__(self, run_id):
        self.workflow_run_id = run_id


class FakeWorkflow:
    def __init__(self, collide_with=None):
        self.runs, self.collide_with = [], collide_with

    def run(self, inp, wait_for_result=True, additional_metadata=None):
        from hatchet_sdk.exceptions import IdempotencyCollisionError

        assert wait_for_result is False
        if self.collide_with:
            raise IdempotencyCollisionError(self.collide_with)
        self.runs.append((inp, additional_metadata))
        return FakeRef(f"wr-{len(self.runs)}")


def test_submit_keys_runs_by_issue_and_reports_collisions(repo):
    svc = Services(repo.resolve(), Config())
    wf = FakeWorkflow()
    engine = hb.HatchetEngine(hb.make_client(), wf, svc)
    run_id, created = engine.submit(TaskInput(issue_id="bd-8", repo=str(svc.repo)))
    assert (run_id, created) == ("wr-1", True)
    # The repository is named by its namespace, the same from every clone, not by a local path.
    assert wf.runs[0][1] == {hb.META_WORKFLOW: "beads-task-execution", hb.META_REPO: hb.repo_namespace(svc),
                             hb.META_ISSUE: "bd-8"}
    assert hb.repo_namespace(svc).startswith("br_")
    engine.workflow = FakeWorkflow(collide_with="wr-existing")
    assert engine.submit(TaskInput(issue_id="bd-8", repo=str(svc.repo))) == ("wr-existing", False)
