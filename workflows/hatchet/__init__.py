"""The Hatchet backend: the same `TASK_FLOW` and the same step functions, run by a Hatchet engine.

Nothing here re-states the workflow. `build_workflow` walks `TASK_FLOW.steps` and declares one
Hatchet task per step with the spec's parents, the configured retry policy and timeouts, the
session cap (task-level concurrency on the step that holds the `opencode` key) and an
on-failure task that calls the very `on_failure` handler the embedded engine calls.

Steps are plain sync functions; each Hatchet task is async and runs its step in a worker thread,
so a cancellation (timeout, `hatchet.runs.cancel`, worker shutdown) reaches the step through
`StepContext.cancel` and the agent can kill its process group.

`run_worker` is `beads-runner worker`. `HatchetEngine` is `workflows.engine.Engine` over Hatchet's
API: `beads-runner start` runs the same poll → claim → submit loop (`beads_runner.daemon.Runner`)
on it as on the embedded engine.

One module per concept: `client` (settings, the client, reaching the engine), `failures` (a
StepFailed across the engine boundary), `context` (the StepContext of a step), `workflow` (the
Hatchet workflow of a spec), `worker` (`beads-runner worker`), `engine` (reading runs) and
`runner` (submitting, the runner's loop, upkeep). The names below are the package's interface.
"""

from workflows.hatchet.client import DOCKER_COMPOSE_ENV, check_hatchet_config, make_client, repo_namespace
from workflows.hatchet.context import Channel, HatchetChannel, HatchetStepContext
from workflows.hatchet.engine import META_ISSUE, META_REPO, META_WORKFLOW, HatchetRuns, HatchetUnavailable
from workflows.hatchet.failures import (
                                        DETAIL_LIMIT,
                                        FAILURE_MARKER,
                                        StepFailedRetryable,
                                        decode_failure,
                                        encode_failure,
                                        to_hatchet_error,
)
from workflows.hatchet.runner import HatchetEngine, hatchet_engine
from workflows.hatchet.worker import (
                                        active_run_guard,
                                        build_worker,
                                        check_same_definition,
                                        register_definition,
                                        registered_version,
                                        run_worker,
                                        worker_slots,
)
from workflows.hatchet.workflow import (
                                        CANCEL_GRACE,
                                        DEFINITION_PREFIX,
                                        PROCEED_FIELD,
                                        PROCESS_SCHEDULE_TIMEOUT,
                                        RATE_LIMIT_KEY,
                                        REFRESH_EVERY,
                                        SCHEDULE_TIMEOUT,
                                        FailureOutput,
                                        ancestors,
                                        build_workflow,
                                        definition_version,
                                        step_timeout,
)

__all__ = [
    "CANCEL_GRACE", "DEFINITION_PREFIX", "DETAIL_LIMIT", "DOCKER_COMPOSE_ENV", "FAILURE_MARKER", "META_ISSUE",
    "META_REPO", "META_WORKFLOW", "PROCEED_FIELD", "PROCESS_SCHEDULE_TIMEOUT", "RATE_LIMIT_KEY", "REFRESH_EVERY",
    "SCHEDULE_TIMEOUT", "Channel", "FailureOutput", "HatchetChannel", "HatchetEngine", "HatchetRuns",
    "HatchetStepContext", "HatchetUnavailable", "StepFailedRetryable", "active_run_guard", "ancestors",
    "build_worker", "build_workflow", "check_hatchet_config", "check_same_definition", "decode_failure",
    "definition_version", "encode_failure", "hatchet_engine", "make_client", "register_definition",
    "registered_version", "repo_namespace", "run_worker", "step_timeout", "to_hatchet_error", "worker_slots",
]
