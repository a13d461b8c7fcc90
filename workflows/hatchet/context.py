"""The StepContext a step gets under Hatchet, and the channel it logs and streams through."""

from __future__ import annotations

import json
import queue
import threading
from datetime import timedelta
from typing import Any, Protocol

import structlog
from pydantic import BaseModel

from workflows.spec import WorkflowSpec

log = structlog.get_logger("beads_runner.hatchet")



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
        task = self._tasks.get(step)
        if task is None:
            raise RuntimeError(f"step {self._step} asked for the output of unknown step {step}")
        try:
            return self._ctx.task_output(task)  # validated by the task's output model (the spec's)
        except ValueError as exc:
            raise RuntimeError(f"step {step} of run {self.run_id} has no output here ({exc}); is it an ancestor "
                               f"of {self._step} in the workflow?") from None

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
