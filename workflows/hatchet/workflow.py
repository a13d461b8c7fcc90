"""The Hatchet workflow of a WorkflowSpec: one task per step, with the configured policies."""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import structlog
from pydantic import BaseModel

from beads_runner import procreg
from beads_runner.config import Config
from workflows.spec import StepDeferred, StepFailed, StepParked, StepSpec, WorkflowSpec
from workflows.task_flow import TASK_FLOW

from workflows.hatchet.context import Channel, HatchetChannel, HatchetStepContext
from workflows.hatchet.failures import decode_failure, to_hatchet_error

log = structlog.get_logger("beads_runner.hatchet")

# Time a session may wait behind the `max_sessions` cap before Hatchet gives up on it. Queued work
# is the normal state of a busy backlog: it must not be cancelled after Hatchet's default 5 minutes.
PROCESS_SCHEDULE_TIMEOUT = timedelta(hours=24)
# The other steps wait for a free worker slot only; an hour covers a worker being restarted.
SCHEDULE_TIMEOUT = timedelta(hours=1)
# While a session runs, its execution timeout is pushed out by this much every this often, up to
# one extra spec timeout in all (the agent enforces `agent.timeout` itself; this is the backstop).
REFRESH_EVERY = 60.0
# After a cancellation, how long the task waits for the step's thread to wind down.
CANCEL_GRACE = 30.0
RATE_LIMIT_KEY = "beads-runner-sessions"


# --- the workflow ------------------------------------------------------------------------------------
class FailureOutput(BaseModel):
    step: str
    reason: str
    attempts: int


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=max(1, math.ceil(value)))


def step_timeout(spec: StepSpec, config: Config) -> float:
    """The same timeout the embedded engine gives the step (see `engine_setup.build_engine`)."""
    return float(spec.timeout(config)) if spec.timeout is not None else float(config.engine.step_timeout)


def ancestors(flow: WorkflowSpec, name: str) -> list[str]:
    """Every step `name` depends on, in spec order. Hatchet hands a task the outputs of its declared
    parents; steps read further up (commit reads check-deps and process), so all ancestors are declared.
    The order of the DAG is the spec's: declaring an ancestor again adds no constraint."""
    seen: set[str] = set()
    todo = list(flow.step(name).parents)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(flow.step(p).parents)
    return [s.name for s in flow.steps if s.name in seen]


PROCEED_FIELD = "proceed"
DEFINITION_PREFIX = "beads-runner definition "


def definition_version(flow: WorkflowSpec, config: Config) -> str:
    """A short hash of everything in the definition that comes from the config (retries, timeouts,
    the session cap, the rate limit): two processes with the same policies register the same version."""
    import hashlib

    eng = config.engine
    policy = {
        "flow": flow.name, "steps": [[s.name, list(s.parents), s.concurrency_key, step_timeout(s, config)]
                                     for s in flow.steps],
        "retry": eng.retry.model_dump(), "max_sessions": eng.max_sessions, "step_timeout": eng.step_timeout,
        "sessions_per_minute": eng.sessions_per_minute, "schedule": [PROCESS_SCHEDULE_TIMEOUT.total_seconds(),
                                                                     SCHEDULE_TIMEOUT.total_seconds()],
    }
    digest = hashlib.sha256(json.dumps(policy, sort_keys=True, default=str).encode()).hexdigest()
    return f"b{digest[:12]}"


class _Pool:
    """The threads steps run in: sized like the worker, so sessions never starve other steps."""

    def __init__(self, size: int):
        self.size = size
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="beads-step")
            return self._pool


class _WaitThenAgain(Exception):
    """A step parked (a provider's limit) or deferred (its worktree busy): Hatchet has no such state,
    so the task waits in place, without spending a try, and runs the step again."""

    def __init__(self, step_error: StepFailed, until: float | None):
        super().__init__(step_error.reason)
        self.step_error = step_error
        self.until = until


def _call_step(spec: StepSpec, inp: BaseModel, sctx: HatchetStepContext) -> BaseModel:
    try:
        return spec.fn(inp, sctx)
    except StepParked as exc:
        sctx.log("step parked; waiting in place", reason=exc.reason, until=exc.until)
        raise _WaitThenAgain(exc, exc.until) from exc
    except StepDeferred as exc:
        sctx.log("step deferred; waiting in place", reason=exc.reason, delay=exc.delay)
        raise _WaitThenAgain(exc, time.time() + exc.delay) from exc
    except StepFailed as exc:
        sctx.log("step failed", reason=exc.reason, retryable=exc.retryable)
        raise to_hatchet_error(exc, sctx.attempt) from exc


async def _run_in_thread(pool: _Pool, fn: Callable[..., Any], *args: Any, cancel: threading.Event | None = None,
                         watch: Callable[[], Any] | None = None) -> Any:
    """Run `fn` in a step thread; on cancellation set `cancel`, give the thread a grace period, re-raise."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(pool.get(), contextvars.copy_context().run, fn, *args)
    watcher = asyncio.ensure_future(watch()) if watch is not None else None
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if cancel is not None:
            cancel.set()  # the agent kills its process group; gates stop
        try:
            await asyncio.wait({future}, timeout=CANCEL_GRACE)
        except asyncio.CancelledError:
            pass
        raise
    finally:
        if watcher is not None:
            watcher.cancel()


WAIT_STEP = 2.0  # how often a waiting task looks again (and keeps its timeout pushed out)


async def _wait(sctx: HatchetStepContext, until: float | None, admitted: Callable[[], bool] | None) -> None:
    """Wait until `until` (None: no time set) and, with `admitted`, until it says yes (no park in
    force, the daily budget not spent), pushing the step's timeout out meanwhile. Cancellation ends
    the wait like any await."""
    refreshed = time.monotonic()
    while True:
        due = until is None or time.time() >= until
        if due and (admitted is None or await asyncio.to_thread(admitted)):
            return
        if until is None and admitted is None:
            return
        await asyncio.sleep(WAIT_STEP)
        if time.monotonic() - refreshed >= REFRESH_EVERY / 2:
            refreshed = time.monotonic()
            await asyncio.to_thread(sctx._channel.refresh, REFRESH_EVERY)


def build_workflow(hatchet: Any, config: Config, *, flow: WorkflowSpec = TASK_FLOW,
                   channel: Callable[[Any], Channel] = HatchetChannel, refresh_every: float = REFRESH_EVERY,
                   guard: Callable[[str, str], str | None] | None = None,
                   admit: Callable[[str], bool] | None = None):
    """The Hatchet workflow for `flow`, with the policies of `config`. Registers nothing by itself."""
    from hatchet_sdk import ConcurrencyExpression, ConcurrencyLimitStrategy, Context, ParentCondition
    from hatchet_sdk.rate_limit import RateLimit
    from hatchet_sdk.types.idempotency import StatusBasedIdempotencyConfig
    from hatchet_sdk.types.sticky import StickyStrategy

    eng = config.engine
    r = eng.retry
    retries = r.attempts - 1  # Hatchet's `retries` counts the tries after the first one
    pool = _Pool(eng.max_sessions + eng.max_runs + 2)
    budget = sum(step_timeout(s, config) * r.attempts for s in flow.steps)
    namespace = getattr(getattr(hatchet, "config", None), "namespace", "") or ""
    wf = hatchet.workflow(
        name=flow.name,
        input_validator=flow.input,
        # The definition's policies, hashed: every process registering the same policies registers
        # the same version, and a worker whose policies differ can be told apart (and refused).
        # (Hatchet v0.104 does not store `version`; it keeps the description of each version.)
        description=f"{DEFINITION_PREFIX}{definition_version(flow, config)}",
        # A run's steps stay on the worker that ran its first one, so verify and commit find the
        # worktree process left (on another machine it would not exist). SOFT, not HARD: when that
        # worker dies, the run moves on rather than waiting for it for ever.
        sticky=StickyStrategy.SOFT,
        # One run per issue while its first step is active (Hatchet holds the key only on the root
        # task); `root_step_guard` extends that to the whole DAG. Keys are tenant-wide: scope them
        # to this repository's namespace. The fallback only frees a key Hatchet never released.
        idempotency=StatusBasedIdempotencyConfig(
            key_expression=f"'{namespace}' + ':' + input.issue_id",
            fallback_ttl=PROCESS_SCHEDULE_TIMEOUT + _seconds(budget + r.backoff_max * r.attempts * len(flow.steps))),
    )
    tasks: dict[str, Any] = {}

    def make_task(spec: StepSpec) -> Callable[..., Any]:
        timeout = step_timeout(spec, config)
        session = spec.concurrency_key is not None

        async def task_fn(input, ctx):  # noqa: A002 - Hatchet's signature
            sctx = HatchetStepContext(ctx, spec.name, input, tasks, flow, channel(ctx))
            started = time.monotonic()

            async def watch() -> None:
                extended, last = 0.0, time.monotonic()
                while True:
                    await asyncio.sleep(min(1.0, refresh_every))
                    if getattr(ctx, "is_cancelled", False):
                        sctx.cancel.set()  # Hatchet's cancel flag, set a second before the task is cancelled
                    if session and time.monotonic() - last >= refresh_every and extended < timeout:
                        last = time.monotonic()
                        try:
                            await asyncio.to_thread(sctx._channel.refresh, refresh_every)
                        except Exception as exc:  # noqa: BLE001 - the backstop must not fail the step
                            sctx._bound.warning("timeout refresh failed", error=str(exc))
                        extended += refresh_every

            try:
                if spec is flow.steps[0] and guard is not None:
                    other = await asyncio.to_thread(guard, flow.key(input), sctx.run_id)
                    if other is not None:
                        sctx.log("another run of this issue is active", other_run=other)
                        return spec.output(**{PROCEED_FIELD: False,
                                              "reason": f"run {other} of this issue is already active"})
                if session:
                    # A session another worker started in this worktree and then died with: kill it
                    # before this attempt starts another there. One worktree, one agent.
                    await asyncio.to_thread(procreg.reap_orphans)
                until: float | None = time.time()
                while True:
                    if session and admit is not None:
                        await _wait(sctx, until, lambda: admit(spec.concurrency_key or ""))
                    elif until is not None:
                        await _wait(sctx, until, None)
                    try:
                        return await _run_in_thread(pool, _call_step, spec, input, sctx, cancel=sctx.cancel,
                                                    watch=watch)
                    except _WaitThenAgain as again:
                        until = again.until
                        if until is None and not (session and admit is not None):
                            until = time.time() + 30  # nothing to ask when it may go on: look again later
            finally:
                sctx.close()
                sctx._bound.debug("step left", elapsed_s=round(time.monotonic() - started, 3))

        task_fn.__name__ = spec.name.replace("-", "_")
        task_fn.__qualname__ = task_fn.__name__
        task_fn.__annotations__ = {"input": flow.input, "ctx": Context, "return": spec.output}
        return task_fn

    for spec in flow.steps:
        options: dict[str, Any] = {}
        if spec.concurrency_key is not None:
            options["concurrency"] = [ConcurrencyExpression(
                expression=f"'{spec.concurrency_key}'", max_runs=eng.max_sessions,
                limit_strategy=ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN)]
            options["schedule_timeout"] = PROCESS_SCHEDULE_TIMEOUT
            if eng.sessions_per_minute:
                options["rate_limits"] = [RateLimit(static_key=RATE_LIMIT_KEY, units=1)]
        else:
            options["schedule_timeout"] = SCHEDULE_TIMEOUT
        missing = [p for p in spec.parents if p not in tasks]
        if missing:
            raise ValueError(f"step {spec.name}: parents {missing} must come before it in {flow.name}")
        root = flow.steps[0]
        if spec is not root and PROCEED_FIELD in root.output.model_fields:
            # The first step says whether the run is ours to do; when not, Hatchet skips the rest
            # before they are queued, so a run that is not ours never takes a session slot. The key
            # is fixed (not the SDK's timestamped default) so that equal configs give equal versions.
            skip = ParentCondition(parent=tasks[root.name], expression=f"output.{PROCEED_FIELD} == false",
                                   readable_data_key=f"{root.name}-{PROCEED_FIELD}")
            skip.base.or_group_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"beads-runner/{flow.name}/{spec.name}/skip"))
            options["skip_if"] = [skip]
        tasks[spec.name] = wf.task(
            name=spec.name,
            parents=[tasks[p] for p in ancestors(flow, spec.name)],
            retries=retries,
            backoff_factor=r.backoff_factor,
            backoff_max_seconds=max(1, int(r.backoff_max)),
            execution_timeout=_seconds(step_timeout(spec, config)),
            **options,
        )(make_task(spec))

    if flow.on_failure is not None:
        handler = flow.on_failure

        async def on_failure(input, ctx):  # noqa: A002
            errors = dict(ctx.task_run_errors or {})
            step = next((s.name for s in flow.steps if s.name in errors), next(iter(errors), "unknown"))
            error, attempt = decode_failure(errors.get(step, ""))
            attempts = attempt or r.attempts
            log.info("run failed, handing over", run_id=ctx.workflow_run_id, issue_id=flow.key(input), step=step,
                     reason=error.reason, attempts=attempts)
            await _run_in_thread(pool, handler, input, ctx.workflow_run_id, step, error, attempts)
            return FailureOutput(step=step, reason=error.reason, attempts=attempts)

        on_failure.__annotations__ = {"input": flow.input, "ctx": Context, "return": FailureOutput}
        wf.on_failure_task(
            name="handover", retries=retries, backoff_factor=r.backoff_factor,
            backoff_max_seconds=max(1, int(r.backoff_max)),
            execution_timeout=_seconds(eng.step_timeout), schedule_timeout=SCHEDULE_TIMEOUT,
        )(on_failure)

    wf.beads_tasks = tasks  # for tests and tools: spec step name → Hatchet task
    return wf
