"""structlog, configured explicitly: readable lines on the console, one JSON object a line in
`.beads-runner/logs/runner.jsonl` (rotated). Every engine event carries issue id, run id and step.

The JSON file keeps every field as logged. The console is for people watching `start`: the local
time, the issue and step first, the run id shortened to its last part, and no empty fields.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

LOG_FILE = "runner.jsonl"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
_shared = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def short_run_id(run_id: str | None) -> str:
    """`run-20261122-035613-b0c678` → `b0c678` (what `logs` also accepts)."""
    if not run_id:
        return ""
    return run_id.rsplit("-", 1)[-1] if run_id.startswith("run-") else run_id


def _for_people(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Console only: `t-1 process: session starting  run=b0c678 attempt=1`, without empty fields."""
    for key in [k for k, v in event_dict.items() if v is None or v == ""]:
        del event_dict[key]
    issue = event_dict.pop("issue_id", None)
    step = event_dict.pop("step", None)
    run_id = event_dict.pop("run_id", None)
    prefix = " ".join(str(x) for x in (issue, step) if x)
    if prefix:
        event_dict["event"] = f"{prefix}: {event_dict.get('event', '')}"
    if run_id:
        event_dict["run"] = short_run_id(str(run_id))
    stamp = event_dict.get("timestamp")
    if isinstance(stamp, str):
        try:
            event_dict["timestamp"] = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone().strftime(
                "%H:%M:%S")
        except ValueError:
            pass
    return event_dict


def _console_renderer() -> structlog.dev.ConsoleRenderer:
    import inspect

    pad = "pad_event_to" if "pad_event_to" in inspect.signature(structlog.dev.ConsoleRenderer).parameters \
        else "pad_event"  # renamed in structlog 25
    return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), **{pad: 42})


def _remove_ours(root: logging.Logger) -> None:
    for handler in list(root.handlers):
        if getattr(handler, "_beads_runner", False):
            root.removeHandler(handler)
            handler.close()


def _add(root: logging.Logger, handler: logging.Handler, level: int, *processors: Any) -> None:
    """One of our handlers: structlog's and stdlib's records rendered by `processors`."""
    handler.setLevel(level)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *processors],
        foreign_pre_chain=_shared))
    handler._beads_runner = True  # type: ignore[attr-defined]
    root.addHandler(handler)


def default_to_stderr() -> None:
    """Before a command configures logging (start, worker): warnings go to stderr, never into the
    output a script reads (status --json, logs --json)."""
    if not structlog.is_configured():
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def configure_logging(log_dir: Path | None, *, console: bool = True, verbose: bool = False,
                      max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS) -> None:
    """Route structlog through stdlib logging to the console (stderr) and, if `log_dir` is given, to
    `log_dir/runner.jsonl`, rotated at `max_bytes` with `backups` older files (`runner.jsonl.1`, …).
    Calling it again replaces what an earlier call set up."""
    structlog.configure(
        processors=[*_shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    _remove_ours(root)
    root.setLevel(logging.DEBUG)
    if console:
        _add(root, logging.StreamHandler(sys.stderr), logging.DEBUG if verbose else logging.INFO,
             _for_people, _console_renderer())
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        _add(root, logging.handlers.RotatingFileHandler(log_dir / LOG_FILE, maxBytes=max_bytes, backupCount=backups,
                                                        encoding="utf-8"),
             logging.DEBUG, structlog.processors.JSONRenderer(default=str))
    for noisy in ("git", "urllib3", "filelock", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def close_logging() -> None:
    """Remove and close the handlers `configure_logging` added (tests, embedders)."""
    _remove_ours(logging.getLogger())
