"""bench/bd_calls.py on tiny inputs: structure and sanity only, nothing timed."""

from __future__ import annotations

import json
from pathlib import Path

from bench import bd_calls


def test_backlog_lines_are_ready_but_taken_or_blocked():
    lines = [json.loads(line) for line in bd_calls.backlog_lines("bk", 10, 3)]
    assert len(lines) == 10 and all(i["status"] == "open" and i["_type"] == "issue" for i in lines)
    assert [i["assignee"] for i in lines[:3]] == ["alice"] * 3
    assert [i["dependencies"][0]["depends_on_id"] for i in lines[3:5]] == ["bk-00000", "bk-00001"]
    assert all("assignee" not in i for i in lines[3:])


def test_logged_calls_name_each_call_and_skip_the_rest_of_multiline_texts(tmp_path: Path):
    log = tmp_path / "calls.log"
    log.write_text("@@ version --json --actor r\n@@ ready --claim --exclude-type epic --json --actor r\n"
                   "@@ comments add tt-1 --json --actor r -- failed at step verify\nsecond line of it\n"
                   "@@ show tt-1 --json --actor r\n@@ close tt-1 --reason x --json --actor r\n")
    assert bd_calls.logged_calls(log) == ["version", "ready --claim", "comments add", "show", "close"]
    assert bd_calls.logged_calls(tmp_path / "none.log") == []


def test_render_labels_every_row_with_its_bd_and_write_keeps_the_rest(tmp_path: Path):
    lat = {"show": {"n": 3, "p50": 0.2, "p95": 0.3}}
    flow = {"issues": 2, "landed": 2, "calls": 13, "per_issue": 6.5, "by_command": {"show": 6, "close": 2}}
    backlog = {"total": 20, "ready": 5, "load_s": 1.0, "calls": 12, "per_issue": 6.0, "by_command": {"show": 6},
               "pickup": {"n": 2, "p50": 0.5, "p95": 0.6, "max": 0.6},
               "latency": {k: {"n": 1, "p50": 0.1, "p95": 0.1} for k in (
                   "ready (the list)", "ready --claim (nothing to claim)", "show", "list --status in_progress")}}
    results = {"machine": {"date_utc": "today", "nproc": 2, "cpu": "cpu", "loadavg_start": "0", "commit": "abc"},
               "loadavg_end": "1", "quick": True, "seconds": 5.0,
               "bds": [{"label": "real bd 1.0.5 (embedded Dolt)", "latency": lat, "flow": flow, "backlog": backlog},
                       {"label": "bd stand-in (tests/fakes/bd)", "latency": lat, "flow": flow, "backlog": backlog}]}
    text = bd_calls.render(results)
    assert text.startswith(bd_calls.BEGIN) and text.endswith(bd_calls.END)
    assert "| real bd 1.0.5 (embedded Dolt) | 2/2 | 13 | 6.5 |" in text
    assert "| bd stand-in (tests/fakes/bd) | 2/2 | 13 | 6.5 |" in text
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Benchmark results\n\nkept above\n")
    bd_calls.write_results(text, results_md)
    bd_calls.write_results(text.replace("6.5", "7.5"), results_md)
    written = results_md.read_text()
    assert written.count(bd_calls.BEGIN) == 1 and "kept above" in written and "7.5" in written
