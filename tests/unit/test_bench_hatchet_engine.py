"""bench/hatchet_engine.py's report (bench/hatchet_report.py, on bench/hatchet_record.py): its shape
from made-up figures, the verdicts, and its own place in RESULTS.md. Structure only: no engine runs and
nothing is timed."""

from __future__ import annotations

import datetime as dt

from bench import hatchet_engine, hatchet_record, hatchet_report


def test_smoke_report_has_a_column_per_row_and_every_measure():
    text = hatchet_report.render(hatchet_report.smoke_results())
    assert text.startswith(hatchet_report.BEGIN) and text.rstrip().endswith(hatchet_report.END)
    header = next(line for line in text.splitlines() if line.startswith("| measure |"))
    assert header == ("| measure | embedded engine (SQLite) | Hatchet, 1 worker | Hatchet, 2 workers | target |")
    for measure in ("pickup p50 / p95", "runner overhead per issue", "dispatch per step p50 / p95, idle",
                    "dispatch per step p50 / p95, during the backlog", "all 3 session slots held",
                    "**throughput vs the sequential loop**"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {measure}"))
        assert row.count("|") == 6, row  # label, three rows, target
    # the verdicts follow the figures: the embedded row is fast, the made-up Hatchet rows slower
    assert "| **2.80×** (met) | **1.40×** (MISSED) | **1.40×** (MISSED) | ≥ 2.7× |" in text
    assert "0.30 / 0.40 s (met) | 1.20 / 1.60 s (MISSED)" in text
    # the engine's own dispatch, Hatchet rows only, idle and under the backlog
    assert "| segment | Hatchet, 1 worker, idle | Hatchet, 1 worker, backlog | Hatchet, 2 workers, idle |" in text
    assert "| queued→assigned | 10 / 12 |" in text
    assert "Hatchet, 2 workers: 4, 1." in text


def test_smoke_mode_prints_without_an_engine(capsys):
    assert hatchet_engine.main(["--smoke"]) == 0
    assert "## The runner on a real Hatchet engine" in capsys.readouterr().out


def test_task_names_and_the_engines_timestamps():
    assert hatchet_record._task_name("check-deps-1796090831507") == "check-deps"
    assert hatchet_record._task_name("commit") == "commit"
    assert hatchet_record._ts(dt.datetime(1, 1, 1, tzinfo=dt.UTC)) is None  # Hatchet's "never"
    assert hatchet_record._ts(dt.datetime(2026, 12, 1, tzinfo=dt.UTC)) > 0


def test_dispatch_gaps_from_step_times():
    steps = {name: {"first_start": 10.0 + i, "start": 10.0 + i, "end": 10.5 + i,
                    "inserted": 10.0 + i - 0.03,
                    "events": {"QUEUED": 9.98 + i, "ASSIGNED": 9.99 + i, "SENT_TO_WORKER": 9.995 + i,
                               "STARTED": 10.0 + i}}
             for i, name in enumerate(hatchet_record.STEPS)}
    runs = {"a": {"status": "succeeded", "created": 9.9, "steps": steps}}
    gaps = hatchet_record.step_gaps(runs, ["a"], include_cap_wait=False)
    assert "check-deps→process" not in [k for k, v in gaps.items() if v]
    assert [round(x, 3) for x in gaps["process→verify"]] == [0.5]
    assert [round(x, 3) for x in gaps["submitted→check-deps"]] == [0.1]
    engine = hatchet_record.engine_dispatch(runs, ["a"], children=("verify", "commit"))
    assert len(engine["queued→assigned"]) == 2
    assert [round(x, 3) for x in engine["parent finished→task inserted"]] == [0.47, 0.47]


def test_the_section_goes_before_the_analysis_and_is_replaced_in_place(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\ngenerated\n\n## Analysis\n\nby hand\n")
    hatchet_report.write_results(hatchet_report.render(hatchet_report.smoke_results()), path)
    first = path.read_text()
    assert first.index(hatchet_report.BEGIN) < first.index("## Analysis") and first.endswith("by hand\n")
    hatchet_report.write_results(f"{hatchet_report.BEGIN}\nnew\n{hatchet_report.END}", path)
    second = path.read_text()
    assert second.count(hatchet_report.BEGIN) == 1 and "\nnew\n" in second and "by hand" in second
