"""Logging: JSON lines in a rotated file, readable console lines, and engine events that name the
issue, the run and the step."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import structlog
from pydantic import BaseModel

from beads_runner.logs import LOG_FILE, close_logging, configure_logging, short_run_id
from workflows.local import LocalEngine
from workflows.spec import StepSpec, WorkflowSpec


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    close_logging()


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_log_file_rotates_and_every_line_is_json(tmp_path):
    configure_logging(tmp_path, console=False, max_bytes=2000, backups=2)
    log = structlog.get_logger("beads_runner.test")
    for n in range(200):
        log.info("event number", n=n, issue_id="t-1", run_id="run-x", text="é" * 10)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [LOG_FILE, f"{LOG_FILE}.1", f"{LOG_FILE}.2"]  # older ones are dropped
    seen = []
    for name in files:
        path = tmp_path / name
        assert path.stat().st_size <= 2000
        for record in json_lines(path):
            assert record["event"] == "event number" and record["level"] == "info"
            assert record["timestamp"].endswith("Z") and record["issue_id"] == "t-1"
            seen.append(record["n"])
    assert max(seen) == 199 and len(seen) < 200  # the newest kept, the oldest rotated away


def test_stdlib_records_land_in_the_file_as_json_too(tmp_path):
    configure_logging(tmp_path, console=False)
    logging.getLogger("some.library").warning("plain %s", "message")
    [record] = json_lines(tmp_path / LOG_FILE)
    assert record["event"] == "plain message" and record["level"] == "warning"


def test_the_console_puts_issue_and_step_first_shortens_run_ids_and_drops_empty_fields(tmp_path, capsys):
    configure_logging(tmp_path, console=True)
    structlog.get_logger("beads_runner.engine").info(
        "step started", run_id="run-20261122-035613-b0c678", issue_id="t-1", step="process", attempt=1,
        continues=None)
    structlog.get_logger("beads_runner.engine").info("run submitted", run_id="run-20261122-035613-b0c678",
                                                     issue_id="t-1", step=None)
    err = capsys.readouterr().err
    first, second = err.splitlines()
    assert "t-1 process: step started" in first and "run=b0c678" in first and "attempt=1" in first
    assert "None" not in err and "step=" not in err and "continues" not in err
    assert "t-1: run submitted" in second
    # the file keeps everything as it was logged
    record = json_lines(tmp_path / LOG_FILE)[0]
    assert record["run_id"] == "run-20261122-035613-b0c678" and record["step"] == "process"
    assert record["continues"] is None


def test_short_run_ids():
    assert short_run_id("run-20261122-035613-b0c678") == "b0c678"
    assert short_run_id("custom") == "custom" and short_run_id(None) == ""


class _In(BaseModel):
    name: str


class _Out(BaseModel):
    ok: bool = True


def _work(inp: _In, ctx) -> _Out:
    ctx.log("working", detail=inp.name)
    return _Out()


def test_every_engine_line_names_the_issue_the_run_and_the_step(tmp_path):
    configure_logging(tmp_path / "logs", console=False)
    flow = WorkflowSpec(name="t", input=_In, steps=(StepSpec("only", _work, _Out),), key=lambda i: i.name)
    engine = LocalEngine(tmp_path / "state.db", flow, poll=0.01)
    run_id, _ = engine.submit(_In(name="t-42"))
    engine.start()
    try:
        assert engine.wait(run_id, timeout=30).status == "succeeded"
    finally:
        engine.stop()
    records = [r for r in json_lines(tmp_path / "logs" / LOG_FILE) if "run_id" in r]
    events = {r["event"] for r in records}
    assert {"run submitted", "step started", "working", "step succeeded", "run succeeded"} <= events
    for r in records:
        assert r["run_id"] == run_id and r["issue_id"] == "t-42" and "step" in r
        if r["event"] in ("step started", "working", "step succeeded"):
            assert r["step"] == "only"
