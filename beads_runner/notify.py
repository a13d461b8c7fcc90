"""Telling people: `[[notify]]` webhooks for what happens while nobody watches.

Events: `landed`, `handed_to_person`, `parked`, `resumed`, `budget_reached`, `runner_started`,
`runner_stopped`. Each is a flat object: `event`, `issue_id`, `title`, `run_id`, `reason`,
`commit`, `time` (Unix seconds) and `at` (ISO 8601, UTC), plus a few event-specific keys.

Delivery never delays or fails a run: `emit` only puts the event on a bounded queue (when it is
full the oldest undelivered event is dropped, and the drop is logged). One background thread takes
what has gathered (up to `MAX_BATCH` events, waiting `BATCH_WINDOW` for more after the first) and
POSTs it to each endpoint whose `events` filter wants any of it, retrying with doubling backoff.

Bodies: `format = "json"`: `{"source": "beads-runner", "repo", "events": [event, ...]}`;
`format = "slack"`: `{"text": "one line per event"}` (a Slack incoming webhook).

`EngineEventFeed` turns the embedded engine's recorded events (landed runs, failed runs, parks)
into notifications, so whatever process ran the step, the daemon that watches tells people once.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
import tenacity

from beads_runner.config import NotifyConfig

log = structlog.get_logger("beads_runner.notify")

MAX_BATCH = 50
BATCH_WINDOW = 0.3
QUEUE_SIZE = 1000

Sender = Callable[[str, bytes, dict[str, str], float], int]


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "beads-runner",
                                              **headers})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only (config)
        return response.status


def make_event(event: str, *, issue_id: str | None = None, title: str | None = None, run_id: str | None = None,
               reason: str | None = None, commit: str | None = None, now: float | None = None,
               **extra: Any) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {"event": event, "issue_id": issue_id, "title": title, "run_id": run_id, "reason": reason,
            "commit": commit, "time": round(now, 3),
            "at": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), **extra}


def slack_line(e: dict[str, Any]) -> str:
    who = f"{e['issue_id']}" + (f" ({e['title']})" if e.get("title") else "") if e.get("issue_id") else ""
    what = {"landed": "landed", "handed_to_person": "needs a person", "parked": "parked",
            "resumed": "resumed", "budget_reached": "daily budget reached", "runner_started": "runner started",
            "runner_stopped": "runner stopped"}.get(e["event"], e["event"])
    detail = e.get("commit") or e.get("reason") or ""
    return " ".join(part for part in ("beads-runner:", who, what, f"— {detail}" if detail else "") if part)


def render_body(endpoint: NotifyConfig, events: list[dict[str, Any]], repo: str) -> bytes:
    if endpoint.format == "slack":
        return json.dumps({"text": "\n".join(slack_line(e) for e in events)}).encode()
    return json.dumps({"source": "beads-runner", "repo": repo, "events": events}).encode()


class Notifier:
    """Sends events to the `[[notify]]` endpoints from a background thread."""

    def __init__(self, endpoints: list[NotifyConfig], *, repo: str = "", sender: Sender | None = None,
                 queue_size: int = QUEUE_SIZE, batch_window: float = BATCH_WINDOW, max_batch: int = MAX_BATCH):
        self.endpoints = list(endpoints)
        self.repo = repo
        self.sender = sender or _post
        self.batch_window = batch_window
        self.max_batch = max_batch
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.dropped = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return bool(self.endpoints)

    def start(self) -> Notifier:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="notify", daemon=True)
            self._thread.start()
        return self

    def emit(self, event: str, **fields: Any) -> None:
        """Queue an event; never blocks, never raises."""
        if not self.enabled:
            return
        item = make_event(event, **fields)
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    lost = self._queue.get_nowait()
                    self.dropped += 1
                    log.warning("notification dropped: the queue is full", notification=lost.get("event"),
                                issue_id=lost.get("issue_id"))
                except queue.Empty:
                    pass

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (for at most `timeout` seconds), then stop the thread."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        self._thread = None

    # -- the thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            end = time.monotonic() + self.batch_window
            while len(batch) < self.max_batch:
                left = end - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            for endpoint in self.endpoints:
                wanted = [e for e in batch if not endpoint.events or e["event"] in endpoint.events]
                if wanted:
                    self._deliver(endpoint, wanted)

    def _post(self, endpoint: NotifyConfig, body: bytes) -> None:
        """One POST; _NotDelivered says why not."""
        try:
            status = self.sender(endpoint.url, body, dict(endpoint.headers), endpoint.timeout)
        except urllib.error.HTTPError as exc:
            # A 4xx but for 408/429: the endpoint refuses this body, retrying cannot help.
            refused = 400 <= exc.code < 500 and exc.code not in (408, 429)
            raise _NotDelivered(f"HTTP {exc.code}", retryable=not refused) from None
        except (OSError, ValueError) as exc:
            raise _NotDelivered(str(exc)) from None
        if not 200 <= status < 300:
            raise _NotDelivered(f"HTTP {status}")

    def _deliver(self, endpoint: NotifyConfig, events: list[dict[str, Any]]) -> None:
        body = render_body(endpoint, events, self.repo)
        problem = ""

        def nap(seconds: float) -> None:
            if self._stop.wait(seconds):  # closing: what is not delivered by now is given up
                raise _Stopped

        def will_retry(state: tenacity.RetryCallState) -> None:
            nonlocal problem
            problem = getattr(state.outcome.exception(), "problem", "") if state.outcome else ""
            log.warning("notification not delivered, will retry", url=endpoint.url, problem=problem,
                        delivery=state.attempt_number, retry_in=state.upcoming_sleep)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, _NotDelivered) and exc.retryable),
            stop=tenacity.stop_after_attempt(endpoint.retries + 1),
            wait=tenacity.wait_exponential(multiplier=endpoint.backoff, max=max(60.0, endpoint.backoff)),
            sleep=nap, before_sleep=will_retry, reraise=True)
        try:
            retrying(self._post, endpoint, body)
            self.delivered += len(events)
            return
        except _NotDelivered as exc:
            problem = exc.problem
        except _Stopped:
            pass  # the problem of the last try stands
        self.failed += len(events)
        log.error("notification not delivered", url=endpoint.url, problem=problem,
                  events=[e["event"] for e in events])


class _NotDelivered(Exception):
    def __init__(self, problem: str, *, retryable: bool = True):
        super().__init__(problem)
        self.problem = problem
        self.retryable = retryable


class _Stopped(Exception):
    """The notifier was closed while a retry waited."""


class EngineEventFeed:
    """The embedded engine's recorded events → notifications, each once (from the daemon's loop)."""

    def __init__(self, engine, notifier: Notifier):
        self.engine = engine
        self.notifier = notifier
        self.last_id = engine.last_event_id()

    def pump(self) -> int:
        if not self.notifier.enabled:
            return 0
        sent = 0
        for e in self.engine.events_since(self.last_id):
            self.last_id = e["id"]
            name = e["event"]
            if name not in ("run succeeded", "run failed", "provider limit: parked"):
                continue
            from workflows.task_flow import did_no_work

            run = self.engine.get_run(e["run_id"])
            if run is None:
                continue
            title = _title(run)
            if name == "run succeeded":
                out = run.outcome or {}
                if did_no_work(out) or not out.get("sha"):
                    continue
                self.notifier.emit("landed", issue_id=run.key, title=title, run_id=run.id, commit=out.get("sha"),
                                   reason=out.get("close_reason"))
            elif name == "run failed":
                reason = f"failed at {e.get('failed_step')}: {e.get('reason')}"
                if run.handler_error:
                    reason += f" (the tracker refused the handover: {run.handler_error}; recorded locally)"
                self.notifier.emit("handed_to_person", issue_id=run.key, title=title, run_id=run.id, reason=reason,
                                   step=e.get("failed_step"))
            elif e.get("new"):
                self.notifier.emit("parked", issue_id=run.key, title=title, run_id=run.id,
                                   reason=e.get("message"), kind=e.get("kind"), until=e.get("until"),
                                   scope=e.get("scope"))
            sent += 1
        return sent


def _title(run) -> str | None:
    for step in run.steps:
        if step.name == "check-deps" and step.output:
            return (step.output.get("issue") or {}).get("title") or None
    return None
