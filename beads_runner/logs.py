"""structlog, configured explicitly: readable lines on the console, one JSON object a line in
`.beads-runner/logs/runner.jsonl` (rotated). Every engine event carries issue id, run id and step."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

import structlog

LOG_FILE = "runner.jsonl"
_shared = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(log_dir: Path | None, *, console: bool = True, verbose: bool = False,
                      max_bytes: int = 10 * 1024 * 1024, backups: int = 5) -> None:
    """Route structlog through stdlib logging to the console and, if given, a rotated JSONL file."""
    structlog.configure(
        processors=[*_shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_beads_runner", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG)
    if console:
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.DEBUG if verbose else logging.INFO)
        handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())],
            foreign_pre_chain=_shared))
        handler._beads_runner = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(log_dir / LOG_FILE, maxBytes=max_bytes,
                                                       backupCount=backups, encoding="utf-8")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.JSONRenderer()],
            foreign_pre_chain=_shared))
        handler._beads_runner = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for noisy in ("git", "urllib3", "filelock", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
