"""`beads-runner worker`: runs this repository's steps for the Hatchet engine."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import structlog

from beads_runner import procreg
from beads_runner.config import Config
from beads_runner.errors import RunnerError
from beads_runner.services import Services
from workflows.spec import WorkflowSpec
from workflows.task_flow import TASK_FLOW

from workflows.hatchet.client import _wait_for_engine, make_client
from workflows.hatchet.engine import _ACTIVE, HatchetRuns, HatchetUnavailable
from workflows.hatchet.workflow import DEFINITION_PREFIX, RATE_LIMIT_KEY, build_workflow, definition_version

log = structlog.get_logger("beads_runner.hatchet")


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
    engine = HatchetRuns(hatchet, None, services, flow=flow)

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
    from beads_runner.engine_setup import BudgetGuard
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
    import os

    from beads_runner.services import register_services

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
