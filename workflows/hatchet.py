"""The Hatchet backend: the same `TASK_FLOW` and the same step functions, run by a Hatchet engine.

Nothing here re-states the workflow. `build_workflow` walks `TASK_FLOW.steps` and declares one
Hatchet task per step with the spec's parents, the configured retry policy and timeouts, the
session cap (task-level concurrency on the step that holds the `opencode` key) and an
on-failure task that calls the very `on_failure` handler the embedded engine calls.

Steps are plain sync functions; each Hatchet task is async and runs its step in a worker thread,
so a cancellation (timeout, `hatchet.runs.cancel`, worker shutdown) reaches the step through
`StepContext.cancel` and the agent can kill its process group.

`run_worker` is `beads-runner worker`; `start_with_hatchet` is `beads-runner start` with
`engine.kind = "hatchet"`: the same poll → claim → submit loop as the embedded engine
(`beads_runner.daemon.Runner`), on an adapter that reads and starts runs through Hatchet's API.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from pydantic import BaseModel

from beads_runner import procreg
from beads_runner.config import Config
from beads_runner.daemon import PollResult, Runner
from beads_runner.errors import RunnerError
from beads_runner.services import Services
from workflows.local import RunView, StepView
from workflows.spec import StepDeferred, StepFailed, StepParked, StepSpec, WorkflowSpec
from workflows.task_flow import TASK_FLOW

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
# How often `start` looks for cancelled runs whose issue is still claimed.
SWEEP_EVERY = 30.0
# How often `start` looks at its runs in flight, to wake its poll loop when one starts or ends.
WATCH_EVERY = 0.5
# Metadata on every run this runner submits: how `start` finds its own runs again.
META_WORKFLOW = "beads_workflow"
META_REPO = "beads_repo"
META_ISSUE = "beads_issue"
# A StepFailed travels to the on-failure task inside the error text Hatchet stores.
FAILURE_MARKER = "[beads-runner-failure "
DETAIL_LIMIT = 4000

DOCKER_COMPOSE_ENV = (
    "create an API token in the Hatchet dashboard (http://localhost:8888 with docker-compose.yml: "
    "Settings → API Tokens) and export HATCHET_CLIENT_TOKEN=<token>; for the docker-compose engine also "
    "export HATCHET_CLIENT_HOST_PORT=localhost:7077 and HATCHET_CLIENT_TLS_STRATEGY=none "
    "(see docs/hatchet.md)"
)

_STATUS = {"QUEUED": "queued", "RUNNING": "running", "COMPLETED": "succeeded", "FAILED": "failed",
           "CANCELLED": "cancelled"}
_ACTIVE = ("queued", "running")


def _is_run_id(text: str) -> bool:
    try:
        uuid.UUID(text)
        return True
    except (ValueError, TypeError, AttributeError):
        return False


# --- the client -------------------------------------------------------------------------------------
def repo_namespace(services: Services | None) -> str:
    """The prefix of this repository's workflow on the engine: `engine.hatchet.namespace`, else
    HATCHET_CLIENT_NAMESPACE, else `br_` and the repository's first commit, which every clone shares
    and no other repository has. Runs of two repositories on one engine never meet."""
    import os

    if services is None:
        return os.environ.get("HATCHET_CLIENT_NAMESPACE", "")
    configured = services.config.engine.hatchet.namespace or os.environ.get("HATCHET_CLIENT_NAMESPACE")
    if configured:
        return configured
    try:
        identity = services.workspace.root_commit()
    except Exception:  # noqa: BLE001 - not a git repository (yet): this path is all it has
        import hashlib

        identity = hashlib.sha1(str(services.repo).encode()).hexdigest()
    return f"br_{identity[:12]}"


def make_client(services: Services | None = None):
    """A Hatchet client from the HATCHET_CLIENT_* environment; opens no connection yet.

    Every setting is read now (not at import), so a token exported after start-up counts."""
    from hatchet_sdk import ClientConfig, Hatchet
    from hatchet_sdk.config import ClientTLSConfig, TenacityConfig

    namespace = repo_namespace(services)
    try:
        config = ClientConfig(tls_config=ClientTLSConfig(), tenacity=TenacityConfig(),
                              **({"namespace": namespace} if namespace else {}))
        return Hatchet(config=config)
    except Exception as exc:  # noqa: BLE001 - pydantic, base64 and JSON errors all mean a bad token
        text = str(exc)
        if "API token is required" in text:
            raise RunnerError("HATCHET_CLIENT_TOKEN is not set (engine.kind = \"hatchet\" needs an API token)",
                              fix=DOCKER_COMPOSE_ENV) from None
        problem = next((line.strip() for line in text.splitlines()
                        if line.strip() and not line.strip().startswith("For further")), type(exc).__name__)
        if "validation error" in problem:
            problem = next((line.strip() for line in text.splitlines()[1:] if line.strip().startswith("Value")),
                           problem)
        raise RunnerError(f"HATCHET_CLIENT_TOKEN is not a valid Hatchet API token ({problem[:200]})",
                          fix="copy the whole token again (a JWT starting with \"ey\"); "
                          + DOCKER_COMPOSE_ENV) from None


def check_hatchet_config(contact: bool = False) -> str:
    """For `doctor`: the token is there and parses, and says where the engine is; with `contact`,
    the engine answers with that token."""
    from hatchet_sdk.token import extract_claims_from_jwt

    hatchet = make_client()
    cfg = hatchet.config
    try:
        claims = extract_claims_from_jwt(cfg.token)
    except Exception as exc:  # noqa: BLE001
        raise RunnerError(f"HATCHET_CLIENT_TOKEN cannot be read: {exc}", fix=DOCKER_COMPOSE_ENV) from None
    host = cfg.host_port
    tls = cfg.tls_config.strategy
    if not host or ":" not in host:
        raise RunnerError(f"the Hatchet gRPC address {host!r} has no port",
                          fix="export HATCHET_CLIENT_HOST_PORT=<host>:<port> (localhost:7077 for docker-compose.yml)")
    if tls not in ("tls", "mtls", "none"):
        raise RunnerError(f"HATCHET_CLIENT_TLS_STRATEGY={tls!r} is not one of tls, mtls, none",
                          fix="export HATCHET_CLIENT_TLS_STRATEGY=none for docker-compose.yml, tls for Hatchet Cloud")
    if tls != "none" and host.split(":")[0] in ("localhost", "127.0.0.1", "0.0.0.0"):
        raise RunnerError(f"TLS strategy {tls!r} for the local engine at {host}; hatchet-lite speaks plain gRPC",
                          fix="export HATCHET_CLIENT_TLS_STRATEGY=none")
    where = (f"hatchet: tenant {claims.sub}, gRPC {host} (TLS {tls}), API {cfg.server_url}"
             f"{', namespace ' + cfg.namespace if cfg.namespace else ''}")
    if not contact:
        return where + " (token parsed; engine not contacted)"
    _wait_for_engine(hatchet, attempts=1)
    return where + " (engine answered)"


# --- failures across the engine boundary ------------------------------------------------------------
class StepFailedRetryable(Exception):
    """A retryable StepFailed, as Hatchet sees it: any exception but NonRetryableException is retried."""


def encode_failure(exc: StepFailed, attempt: int) -> str:
    """One line: the reason people read in the dashboard, then what `on_failure` needs."""
    detail = exc.detail or ""
    if len(detail) > DETAIL_LIMIT:
        detail = "…" + detail[-DETAIL_LIMIT:]
    payload = json.dumps({"reason": exc.reason, "detail": detail, "retryable": exc.retryable, "attempt": attempt},
                         ensure_ascii=True)
    return f"{' '.join(exc.reason.split())} {FAILURE_MARKER}{payload}]"


def to_hatchet_error(exc: StepFailed, attempt: int) -> Exception:
    from hatchet_sdk.exceptions import NonRetryableException

    text = encode_failure(exc, attempt)
    return StepFailedRetryable(text) if exc.retryable else NonRetryableException(text)


def decode_failure(text: str) -> tuple[StepFailed, int | None]:
    """The StepFailed (and its attempt) back from a stored error; any other error becomes its first line."""
    text = text or ""
    at = text.find(FAILURE_MARKER)
    if at >= 0:
        try:
            data, _ = json.JSONDecoder().raw_decode(text, at + len(FAILURE_MARKER))
            return (StepFailed(str(data.get("reason") or "failed"), retryable=bool(data.get("retryable")),
                               detail=str(data.get("detail") or "")),
                    int(data["attempt"]) if data.get("attempt") else None)
        except (ValueError, TypeError, KeyError, AttributeError):
            pass
    first = next((line.strip() for line in text.splitlines() if line.strip()), "failed (no error recorded)")
    return StepFailed(first, retryable=False, detail=text[-DETAIL_LIMIT:] if len(text) > len(first) else ""), None


# --- the StepContext a step gets under Hatchet ----------------------------------------------------
class Channel(Protocol):
    """What the adapter sends to Hatchet besides the result. Must never raise nor block a step long."""

    def log(self, line: str) -> None: ...

    def stream(self, data: str) -> None: ...

    def refresh(self, seconds: float) -> None: ...

    def close(self) -> None: ...


class HatchetChannel:
    """`ctx.log` (queued, non-blocking), `ctx.put_stream` (sent from a background thread, because it
    retries over the network) and `ctx.refresh_timeout`; every failure is logged and dropped."""

    def __init__(self, ctx: Any):
        self._ctx = ctx
        self._streams: queue.Queue[str | None] = queue.Queue(maxsize=1000)
        self._sender: threading.Thread | None = None

    def log(self, line: str) -> None:
        try:
            self._ctx.log(line)
        except Exception as exc:  # noqa: BLE001
            log.debug("hatchet log dropped", error=str(exc))

    def stream(self, data: str) -> None:
        if self._sender is None:
            self._sender = threading.Thread(target=self._send, name="hatchet-stream", daemon=True)
            self._sender.start()
        try:
            self._streams.put_nowait(data)
        except queue.Full:
            log.debug("hatchet stream event dropped")

    def _send(self) -> None:
        while (data := self._streams.get()) is not None:
            try:
                self._ctx.put_stream(data)
            except Exception as exc:  # noqa: BLE001
                log.debug("hatchet stream event failed", error=str(exc))

    def close(self) -> None:
        """The step is over: let the stream sender send what is queued, then end."""
        if self._sender is not None:
            try:
                self._streams.put(None, timeout=5)
            except queue.Full:
                log.debug("hatchet stream sender not stopped: queue full")

    def refresh(self, seconds: float) -> None:
        try:
            self._ctx.refresh_timeout(timedelta(seconds=max(1, int(seconds))))
        except Exception as exc:  # noqa: BLE001
            log.warning("could not refresh the step's timeout", error=str(exc))


class HatchetStepContext:
    """`workflows.spec.StepContext` over a Hatchet `Context`."""

    def __init__(self, ctx: Any, step: str, inp: BaseModel, tasks: dict[str, Any], flow: WorkflowSpec,
                 channel: Channel):
        self.run_id: str = ctx.workflow_run_id
        self.attempt: int = ctx.retry_count + 1
        self.cancel = threading.Event()
        self._ctx = ctx
        self._step = step
        self._tasks = tasks
        self._flow = flow
        self._channel = channel
        self._bound = log.bind(run_id=self.run_id, issue_id=flow.key(inp), step=step, attempt=self.attempt)
        self.notes: dict[str, Any] = {}

    def parent(self, step: str) -> Any:
        if step not in self._tasks:
            raise RuntimeError(f"step {self._step} asked for the output of unknown step {step}")
        # Read the parent's output as sent, not through `ctx.task_output`: Hatchet takes an output
        # with `"skipped": true` for a task it skipped itself and refuses to hand it over, and our
        # outputs use that very field (ProcessOutput(skipped=True) when there is nothing to do).
        parents = getattr(getattr(self._ctx, "_data", None), "parents", None)
        if parents is None or step not in parents:
            raise RuntimeError(f"step {step} of run {self.run_id} has no output here; is it an ancestor of "
                               f"{self._step} in the workflow?")
        return self._flow.step(step).output.model_validate(parents[step])

    def close(self) -> None:
        close = getattr(self._channel, "close", None)
        if close is not None:
            close()

    def log(self, event: str, **fields: Any) -> None:
        self._bound.info(event, **fields)
        self._channel.log(json.dumps({"event": event, **fields}, default=str))

    def note(self, **fields: Any) -> None:
        self.notes.update(fields)
        self._bound.info("note", **fields)
        self._channel.stream(json.dumps({"step": self._step, "attempt": self.attempt, **fields}, default=str))


# --- the workflow ------------------------------------------------------------------------------------
class FailureOutput(BaseModel):
    step: str
    reason: str
    attempts: int


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=max(1, math.ceil(value)))


def step_timeout(spec: StepSpec, config: Config) -> float:
    """The same timeout the embedded engine gives the step (see `daemon.build_engine`)."""
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


# --- the worker --------------------------------------------------------------------------------------
def worker_slots(config: Config) -> int:
    """Sessions plus the other steps of every run in flight: a worker full of sessions still has
    slots for check-deps, verify and commit."""
    return config.engine.max_sessions + config.engine.max_runs


def _put_rate_limit(hatchet: Any, config: Config) -> None:
    if config.engine.sessions_per_minute:
        from hatchet_sdk.rate_limit import RateLimitDuration

        hatchet.rate_limits.put(RATE_LIMIT_KEY, config.engine.sessions_per_minute, RateLimitDuration.MINUTE)


def active_run_guard(hatchet: Any, services: Services, flow: WorkflowSpec = TASK_FLOW
                     ) -> Callable[[str, str], str | None]:
    """For the first step: the id of another active run of the same issue that came first, if any.

    Hatchet's idempotency key is held only while the first step runs; this keeps one run per issue
    for the whole DAG. The oldest active run is the one that works; a later one ends as not ours."""
    engine = HatchetEngine(hatchet, None, services, flow=flow)

    def guard(key: str, run_id: str) -> str | None:
        try:
            views = [engine._summary_view(r) for r in engine._list(_ACTIVE, 20, key)]
        except HatchetUnavailable as exc:
            log.warning("could not check for other runs of the issue", issue_id=key, error=exc.message)
            return None
        others = [v for v in views if v.id != run_id]
        log.debug("other active runs of the issue", issue_id=key, run_id=run_id,
                  seen=[(v.id, v.created_at) for v in views])
        if not others:
            return None
        mine = next((v for v in views if v.id == run_id), None)
        first = min(others, key=lambda v: (v.created_at, v.id))
        if mine is not None and (mine.created_at, mine.id) < (first.created_at, first.id):
            return None
        return first.id

    return guard


def register_definition(hatchet: Any, services: Services, wf: Any) -> None:
    """Register this configuration's workflow with the engine over gRPC (`start` does, before it
    claims anything): it proves the engine is reachable and makes this the definition runs use."""
    from hatchet_sdk.clients.admin import AdminClient

    try:
        AdminClient(hatchet.config, None, None).put_workflow(wf.to_proto())  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001
        raise RunnerError(f"could not register the workflow with the Hatchet engine at {hatchet.config.host_port} "
                          f"(gRPC): {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
                          fix="check HATCHET_CLIENT_HOST_PORT and that the engine's gRPC port is reachable") from None


def registered_version(hatchet: Any, flow: WorkflowSpec = TASK_FLOW) -> str | None:
    """The version of the workflow the engine runs now (the latest registered), or None if none is."""
    name = hatchet.config.apply_namespace(flow.name)
    found = hatchet.workflows.list(workflow_name=flow.name, limit=50)
    for row in found.rows or []:
        if row.name == name:
            config = hatchet.workflows.get_version(row.metadata.id).workflow_config or {}
            description = str(config.get("description") or "")
            return description.removeprefix(DEFINITION_PREFIX) if description.startswith(DEFINITION_PREFIX) else ""
    return None


def check_same_definition(hatchet: Any, services: Services, flow: WorkflowSpec = TASK_FLOW) -> None:
    """A worker whose policies differ from the registered definition would register a second
    version, and Hatchet caps sessions per version: the cap would double. Refuse instead."""
    mine = definition_version(flow, services.config)
    try:
        theirs = registered_version(hatchet, flow)
    except Exception as exc:  # noqa: BLE001 - the engine was reached already; say what failed
        log.warning("could not read the registered workflow version", error=str(exc).splitlines()[0])
        return
    if theirs is not None and theirs != mine:
        raise RunnerError(
            f"this worker's workflow definition ({mine}) differs from the one registered on the engine ({theirs}): "
            "its retries, timeouts or session cap differ, and Hatchet would cap sessions per definition",
            fix="use the same [engine] and [agent] settings in .beads-runner.toml on every machine and restart "
                "`beads-runner start` (it registers the definition) before the workers")


def build_worker(services: Services, name: str | None = None, hatchet: Any = None):
    """The worker for this repository's configuration (not started). Returns (worker, workflow)."""
    hatchet = hatchet or make_client(services)
    from beads_runner.daemon import BudgetGuard
    from beads_runner.parking import Admission

    # No new session while the provider is parked or the daily budget is spent, as on the embedded
    # engine (the parks and the spend are this machine's).
    budget = BudgetGuard(services.config.agent.daily_budget_usd, services.state_dir)
    admission = Admission(services.config, services.state_dir, budget_guard=budget)
    wf = build_workflow(hatchet, services.config, guard=active_run_guard(hatchet, services), admit=admission.admit)
    worker = hatchet.worker(name or f"beads-runner-{socket.gethostname()}", slots=worker_slots(services.config),
                            workflows=[wf])
    return worker, wf


def run_worker(services: Services, name: str | None = None) -> None:
    """`beads-runner worker`: run this repository's steps for the Hatchet engine until stopped."""
    from beads_runner.services import register_services

    import os

    register_services(services)
    # Steps find their repository by the run's input, which names the path on the submitting
    # machine; on this worker it is this clone.
    os.environ.setdefault("BEADS_RUNNER_REPO", str(services.repo))
    hatchet = make_client(services)
    _wait_for_engine(hatchet)
    check_same_definition(hatchet, services)
    # Agents and gates are recorded, so that those a killed worker left behind can be found: this
    # worker reaps them now, and before each step it runs (its owner may have died meanwhile).
    procreg.configure(services.state_dir / "procs")
    procreg.reap_orphans()
    _put_rate_limit(hatchet, services.config)
    worker, _ = build_worker(services, name, hatchet)
    cfg = hatchet.config
    log.info("hatchet worker starting", name=worker.name, slots=worker_slots(services.config), engine=cfg.host_port,
             repo=str(services.repo), healthcheck=(f"http://localhost:{cfg.healthcheck.port}/health"
                                                   if cfg.healthcheck.enabled else "off"))
    worker.start()


def _wait_for_engine(hatchet: Any, attempts: int = 10, delay: float = 1.0) -> None:
    """Block until Hatchet's API answers, with backoff; a clear error if it never does."""
    last = ""
    for n in range(attempts):
        try:
            hatchet.runs.list(limit=1, since=datetime.now(tz=UTC) - timedelta(minutes=1),
                              include_payloads=False)
            return
        except Exception as exc:  # noqa: BLE001
            last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "401" in last or "403" in last or "Unauthorized" in last:
                raise RunnerError(f"the Hatchet engine at {hatchet.config.server_url} refused the token ({last})",
                                  fix="create a new API token for this tenant; " + DOCKER_COMPOSE_ENV) from None
            if n + 1 < attempts:
                log.warning("waiting for the Hatchet engine", api=hatchet.config.server_url, error=last,
                            attempt=n + 1)
                time.sleep(min(10.0, delay * 2 ** n))
    raise RunnerError(
        f"cannot reach the Hatchet engine (API {hatchet.config.server_url}, gRPC {hatchet.config.host_port}): {last}",
        fix="start it (`beads-runner hatchet up` on this machine, or `docker compose up -d`; see docs/hatchet.md) "
            "and check HATCHET_CLIENT_HOST_PORT and HATCHET_CLIENT_TLS_STRATEGY")


# --- `start` on Hatchet ------------------------------------------------------------------------------
class HatchetUnavailable(RunnerError):
    """Hatchet's API failed a call the poll loop needs; the loop tries again at the next poll."""


class HatchetEngine:
    """What `daemon.Runner` asks of an engine, answered by Hatchet's runs API.

    Runs execute on workers (`beads-runner worker`), not here: `start`/`stop` only mark the loop."""

    def __init__(self, hatchet: Any, workflow: Any, services: Services, *, flow: WorkflowSpec = TASK_FLOW):
        self.hatchet = hatchet
        self.workflow = workflow
        self.flow = flow
        self.services = services
        self.repo = repo_namespace(services)  # the same on every machine working this repository
        self._listeners: list[Callable[[], None]] = []
        self.started = False
        # Runs this process started and has not yet seen end: the runs list is read from the engine's
        # analytics tables, which may lag a new run by a moment, and `--once` must not stop before it.
        self._pending: set[str] = set()
        self._watcher: threading.Thread | None = None

    # submitting
    def submit(self, inp: BaseModel) -> tuple[str, bool]:
        from hatchet_sdk.exceptions import IdempotencyCollisionError

        key = self.flow.key(inp)
        try:
            ref = self.workflow.run(inp, wait_for_result=False, additional_metadata=self._meta(key))
        except IdempotencyCollisionError as exc:
            return exc.existing_run_external_id, False
        except Exception as exc:  # noqa: BLE001
            raise HatchetUnavailable(f"could not start a run for {key}: {exc}",
                                     fix="check that the Hatchet engine is up (docs/hatchet.md)") from exc
        self._pending.add(ref.workflow_run_id)
        return ref.workflow_run_id, True

    def _meta(self, key: str | None = None) -> dict[str, str]:
        meta = {META_WORKFLOW: self.flow.name, META_REPO: self.repo}
        if key is not None:
            meta[META_ISSUE] = key
        return meta

    # reading
    def _list(self, statuses: tuple[str, ...] | None, limit: int, key: str | None) -> list[Any]:
        """This repository's runs (of one issue, with `key`), newest first.

        The SDK's `runs.list` sends no metadata operator, and the engine then ORs the pairs: every run
        of the repository would match any issue. The REST API takes the operator: ask for AND, and
        check the pairs here as well, so a server that ignores it cannot mislead us."""
        from hatchet_sdk import V1TaskStatus

        wanted = [V1TaskStatus(s) for s, ours in _STATUS.items() if statuses is None or ours in statuses]
        meta = self._meta(key)
        try:
            rows = self._list_rows(wanted, limit, meta)
        except Exception as exc:  # noqa: BLE001
            raise HatchetUnavailable(f"could not list Hatchet runs: {exc}",
                                     fix="check that the Hatchet engine is up (docs/hatchet.md)") from exc
        return [r for r in rows if all(str((r.additional_metadata or {}).get(k)) == v for k, v in meta.items())]

    def _list_rows(self, wanted: list[Any], limit: int, meta: dict[str, str]) -> list[Any]:
        """One call to the engine's REST API: runs with all of `meta` (AND), of the statuses wanted."""
        from hatchet_sdk.clients.rest.api.workflow_runs_api import WorkflowRunsApi
        from hatchet_sdk.clients.rest.models.v1_additional_metadata_operator import V1AdditionalMetadataOperator

        with self.hatchet.runs.client() as client:
            result = WorkflowRunsApi(client).v1_workflow_run_list(
                tenant=self.hatchet.config.tenant_id, since=datetime.now(tz=UTC) - timedelta(days=6),
                only_tasks=False, statuses=wanted, limit=limit,
                additional_metadata=[f"{k}:{v}" for k, v in meta.items()],
                additional_metadata_operator=V1AdditionalMetadataOperator.AND, include_payloads=True)
        return list(result.rows or [])

    def _summary_view(self, row: Any) -> RunView:
        meta = row.additional_metadata or {}
        status = _STATUS.get(getattr(row.status, "value", str(row.status)), "running")
        # When the run was triggered: its metadata's creation time (row.created_at is when its first
        # task started, later, and not in trigger order).
        stamp = getattr(getattr(row, "metadata", None), "created_at", None) or row.created_at
        created = stamp.timestamp() if stamp else time.time()
        finished = row.finished_at.timestamp() if row.finished_at else None
        return RunView(id=row.workflow_run_external_id or row.metadata.id, key=str(meta.get(META_ISSUE, "")),
                       status=status, input=dict(row.input or {}), created_at=created,
                       updated_at=finished or created, finished_at=finished, failed_step=None,
                       error=row.error_message, outcome=dict(row.output or {}) or None)

    def get_run(self, run_id: str) -> RunView | None:
        if not _is_run_id(run_id):
            return None  # an issue id or a short form: Hatchet's run ids are UUIDs
        try:
            details = self.hatchet.runs.get(run_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not read a Hatchet run", run_id=run_id, error=str(exc))
            return None
        run = details.run
        meta = run.additional_metadata or {}
        by_name = {}
        for t in details.tasks or []:
            name = (t.action_id or "").rsplit(":", 1)[-1] or t.display_name
            by_name[name] = t
        steps = []
        failed_step, error = None, run.error_message
        for spec in self.flow.steps:
            t = by_name.get(spec.name)
            status = "pending"  # not created yet: its parents are still running
            if t is not None:
                status = _STATUS.get(getattr(t.status, "value", str(t.status)), "running")
                status = {"queued": "pending", "cancelled": "failed"}.get(status, status)
            if status == "failed" and failed_step is None:
                failed_step, error = spec.name, (t.error_message if t is not None else error)
            steps.append(StepView(name=spec.name, status=status, attempt=(t.attempt or (t.retry_count or 0) + 1)
                                  if t is not None else 0,
                                  max_attempts=self.services.config.engine.retry.attempts,
                                  error=t.error_message if t is not None else None, notes={},
                                  started_at=t.started_at.timestamp() if t is not None and t.started_at else None,
                                  finished_at=t.finished_at.timestamp() if t is not None and t.finished_at else None,
                                  not_before=0.0, output=dict(t.output or {}) or None if t is not None else None))
        status = _STATUS.get(getattr(run.status, "value", str(run.status)), "running")
        last = steps[-1].output if steps else None
        return RunView(id=run_id, key=str(meta.get(META_ISSUE, "")), status=status, input=dict(run.input or {}),
                       created_at=run.created_at.timestamp() if run.created_at else time.time(),
                       updated_at=time.time(), finished_at=run.finished_at.timestamp() if run.finished_at else None,
                       failed_step=failed_step if status == "failed" else None,
                       error=decode_failure(error)[0].reason if status == "failed" and error else None,
                       outcome=last if status == "succeeded" else None, steps=steps)

    def runs(self, statuses: tuple[str, ...] | None = None, limit: int = 100, key: str | None = None) -> list[RunView]:
        views = [self._summary_view(r) for r in self._list(statuses, limit, key)]
        # Active runs are few (≤ sessions + runs in flight); their steps say which hold a session.
        return [(self.get_run(v.id) or v) if v.status in _ACTIVE else v for v in views]

    # what `status`, `logs` and `review` read (the embedded engine answers the same questions)
    def attempts(self, run_id: str) -> list[dict[str, Any]]:
        """One entry per step that ran, its latest attempt (Hatchet keeps the count, not each try)."""
        run = self.get_run(run_id)
        if run is None:
            return []
        return [{"run_id": run_id, "step": s.name, "attempt": s.attempt, "status": s.status, "error": s.error,
                 "started_at": s.started_at, "finished_at": s.finished_at, "notes": s.notes}
                for s in run.steps if s.attempt]

    def events(self, run_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        """The run's step events, read back from the engine: each step's `ctx.log` lines (one JSON
        object each, see HatchetStepContext.log), in time order, numbered so `logs -f` can resume."""
        if not _is_run_id(run_id):
            return []
        try:
            details = self.hatchet.runs.get(run_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not read a Hatchet run", run_id=run_id, error=str(exc).splitlines()[0])
            return []
        out: list[dict[str, Any]] = []
        for t in details.tasks or []:
            step = (t.action_id or "").rsplit(":", 1)[-1] or t.display_name
            task_id = getattr(t, "task_external_id", None) or t.metadata.id
            try:
                lines = self.hatchet.logs.list(task_id).rows or []
            except Exception as exc:  # noqa: BLE001
                log.debug("could not read a step's logs", run_id=run_id, step=step, error=str(exc).splitlines()[0])
                continue
            for line in lines:
                try:
                    data = json.loads(line.message)
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    data = {"event": str(line.message)}
                ts = line.created_at.timestamp() if line.created_at else 0.0
                out.append({"run_id": run_id, "step": step, "ts": ts, **data})
        out.sort(key=lambda e: (e["ts"], e["step"]))
        for n, event in enumerate(out, 1):
            event["id"] = n
        return [e for e in out if e["id"] > after_id]

    def dashboard_url(self, run_id: str) -> str | None:
        """The run in Hatchet's own dashboard: the client's server URL + /runs/<id>."""
        base = str(getattr(self.hatchet.config, "server_url", "") or "").rstrip("/")
        return f"{base}/runs/{run_id}" if base and _is_run_id(run_id) else None

    def sessions_in_use(self, key: str) -> int:
        return sum(1 for run in self.runs(statuses=_ACTIVE, limit=1000)
                   for s in run.steps if s.status == "running" and self.flow.step(s.name).concurrency_key == key)

    def stream(self, run_id: str) -> Iterator[dict[str, Any]]:
        """The run's step events as they happen (`ctx.put_stream` on the workers), until the run ends."""
        import asyncio
        import queue

        events: queue.Queue = queue.Queue()
        done = object()

        async def pump() -> None:
            try:
                async for payload in self.hatchet.runs.subscribe_to_stream(run_id):
                    events.put(payload)
            finally:
                events.put(done)

        threading.Thread(target=lambda: asyncio.run(pump()), name="hatchet-stream", daemon=True).start()
        while (item := events.get()) is not done:
            try:
                yield json.loads(item) if isinstance(item, str) else dict(item)
            except (ValueError, TypeError):
                yield {"event": str(item)}

    def active_run(self, key: str) -> str | None:
        rows = self._list(_ACTIVE, 1, key)
        return self._summary_view(rows[0]).id if rows else None

    def has_active_runs(self) -> bool:
        if self._list(_ACTIVE, 1, None):
            return True
        for run_id in list(self._pending):
            view = self.get_run(run_id)
            if view is not None and view.status not in _ACTIVE:
                self._pending.discard(run_id)
        return bool(self._pending)

    def settled_run(self, run_id: str, tries: int = 5, delay: float = 1.0) -> RunView | None:
        """The run once the engine can show it (a run just started may not be readable for a moment)."""
        for n in range(tries):
            view = self.get_run(run_id)
            if view is not None:
                return view
            if n + 1 < tries:
                time.sleep(delay)
        return None

    # the loop
    def start(self) -> None:
        self.started = True
        if self._listeners and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_runs, name="hatchet-watch", daemon=True)
            self._watcher.start()

    def _watch_runs(self) -> None:
        """Wake the poll loop when a run of this repository starts or ends on the workers, as the
        embedded engine does when a step ends: a finished run frees its claim at once, and `--once`
        ends without waiting for the next poll. One list call every WATCH_EVERY seconds."""
        last: frozenset[tuple[str, str]] | None = None
        while self.started:
            try:
                current = frozenset((self._summary_view(r).id, str(getattr(r.status, "value", r.status)))
                                    for r in self._list(_ACTIVE, 200, None))
            except HatchetUnavailable:
                current = last
            if last is not None and current != last:
                for fn in list(self._listeners):
                    fn()
            last = current
            time.sleep(WATCH_EVERY)

    def stop(self, grace: float = 0.0) -> None:
        self.started = False
        log.info("runs in flight go on on the Hatchet workers", grace_ignored=grace)

    def cancel_running(self) -> None:
        log.info("runs are not cancelled by stopping `start`; use the Hatchet dashboard or `hatchet.runs.cancel`")

    def add_listener(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    # what notifications, `cancel` and the failure handler's bookkeeping ask of an engine
    def last_event_id(self) -> int:
        return 0

    def events_since(self, after_id: int, limit: int = 500) -> list[dict[str, Any]]:
        """Notifications read the embedded engine's event log; on Hatchet the workers' own runners
        send none yet (docs/hatchet.md, limits)."""
        return []

    def clear_handler_error(self, run_id: str) -> None:
        """The handover of a Hatchet run is the on-failure task's, recorded by the engine itself."""

    def request_cancel(self, run_id: str, by: str) -> bool:
        """`beads-runner cancel` on Hatchet: cancel the run through the API. The worker's step gets
        the cancellation and kills the session's process group; `start` then hands the issue over."""
        try:
            self.hatchet.runs.cancel(run_id)
        except Exception as exc:  # noqa: BLE001
            raise HatchetUnavailable(f"could not cancel run {run_id}: {exc}",
                                     fix="check that the Hatchet engine is up (docs/hatchet.md)") from exc
        log.info("run cancelled through the Hatchet API", run_id=run_id, by=by)
        return True


def hatchet_engine(services: Services) -> HatchetEngine:
    """The Hatchet engine of a repository's configuration, for `submit`, `status` and `logs`."""
    client = make_client(services)
    return HatchetEngine(client, build_workflow(client, services.config), services)


class HatchetRunner(Runner):
    """`daemon.Runner` on Hatchet: the same poll → claim → submit, surviving an engine hiccup."""

    def __init__(self, services: Services, engine: HatchetEngine):
        super().__init__(services, engine=engine)  # type: ignore[arg-type]
        self._next_sweep = 0.0
        self._swept_file = services.state_dir / "hatchet" / "swept-runs.json"

    def poll_once(self) -> PollResult:
        try:
            self.sweep_cancelled()
            return super().poll_once()
        except HatchetUnavailable as exc:
            log.warning("hatchet unavailable, will poll again", error=exc.message)
            return PollResult()

    def sweep_cancelled(self, force: bool = False) -> list[str]:
        """Hatchet runs no on-failure task for a CANCELLED run (cancelled through the API or the
        dashboard, or by a schedule timeout): its issue would stay claimed for ever. Hand each such
        issue to a person, with a comment; its branch is kept. Returns the issues handed over."""
        now = time.monotonic()
        if not force and now < self._next_sweep:
            return []
        self._next_sweep = now + SWEEP_EVERY
        try:
            swept = set(json.loads(self._swept_file.read_text()))
        except (OSError, ValueError):
            swept = set()
        handed: list[str] = []
        for row in self.engine._list(("cancelled",), 100, None):
            view = self.engine._summary_view(row)
            if view.id in swept or not view.key:
                continue
            tracker = self.tracker
            try:
                issue = tracker.show(view.key)
                if issue.status == "in_progress" and issue.assignee == tracker.actor \
                        and not self.engine.active_run(view.key):
                    tracker.comment(view.key, f"beads-runner: its Hatchet run {view.id} was cancelled (through the "
                                              "API or dashboard, or by a schedule timeout), so nothing landed; the "
                                              f"branch beads-runner/{view.key} is kept. Reopen the issue to run "
                                              "it again.")
                    tracker.hand_to_human(view.key)
                    handed.append(view.key)
                    log.warning("run was cancelled; handed the issue to a person", issue_id=view.key, run_id=view.id)
            except RunnerError as exc:
                log.warning("could not sweep a cancelled run; will try again", run_id=view.id, error=exc.message)
                continue
            swept.add(view.id)
        self._swept_file.parent.mkdir(parents=True, exist_ok=True)
        self._swept_file.write_text(json.dumps(sorted(swept)))
        return handed

    def _idle(self) -> bool:
        if not super()._idle():
            return False
        # Before `--once` ends: the issues of runs cancelled meanwhile must not stay claimed.
        try:
            self.sweep_cancelled(force=True)
        except HatchetUnavailable as exc:
            log.warning("could not sweep cancelled runs", error=exc.message)
        return True

    def reconcile(self) -> list[str]:
        """After a restart: the runs Hatchet still has in flight for this repository are ours again."""
        try:
            active = [r.id for r in self.engine.runs(statuses=_ACTIVE, limit=1000)]
        except HatchetUnavailable as exc:
            log.warning("could not reconcile with Hatchet", error=exc.message)
            return []
        log.info("reconciled with hatchet", runs_in_flight=len(active))
        return active

    def run(self, *, once: bool = False, poll_interval: float | None = None, watch_interval: float = 0.2) -> int:
        # Runner.run picks up the engine's unfinished runs itself (through `runs`); log them here.
        self.reconcile()
        return super().run(once=once, poll_interval=poll_interval, watch_interval=watch_interval)

    def exit_code(self) -> int:
        """1 if any run failed, or if the engine cannot say how one ended: an unknown end is no success."""
        try:
            for run_id in dict.fromkeys(self.submitted):
                view = self.engine.settled_run(run_id)
                if view is None:
                    log.error("cannot read how a run ended", run_id=run_id)
                    return 1
                if view.status in ("failed", "cancelled"):
                    return 1
            return 0
        except HatchetUnavailable:
            return 1


def start_with_hatchet(services: Services, once: bool = False, poll_interval: float | None = None) -> int:
    """`beads-runner start` with engine.kind = "hatchet": claims ready issues and submits runs to Hatchet.

    The steps run on `beads-runner worker` processes (this machine or others)."""
    import signal

    from beads_runner.logs import configure_logging

    configure_logging(services.state_dir / "logs")
    services.workspace.check_target()
    services.tracker.version()
    hatchet = make_client(services)
    _wait_for_engine(hatchet)
    _put_rate_limit(hatchet, services.config)
    workflow = build_workflow(hatchet, services.config)
    register_definition(hatchet, services, workflow)  # before the first claim: gRPC works, one definition
    engine = HatchetEngine(hatchet, workflow, services)
    runner = HatchetRunner(services, engine)

    def handler(signum, _frame):
        log.info("stopping: no new claims; runs in flight go on on the workers", signal=signal.Signals(signum).name)
        runner.request_stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return runner.run(once=once, poll_interval=poll_interval)
