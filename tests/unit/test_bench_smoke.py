"""The benchmark harness (bench/) works on tiny inputs. Structure and sanity only: nothing here is timed."""

from __future__ import annotations

import json
import math
import os

import pytest

from bench import engine, machine, rig, run, stats, throughput
from bench.baseline import sequential_loop


def test_percentile_and_summary():
    assert stats.percentile([3.0], 95) == 3.0
    assert stats.percentile([1, 2, 3, 4, 5], 50) == 3
    assert stats.percentile([0, 10], 95) == pytest.approx(9.5)
    assert math.isnan(stats.percentile([], 50))
    s = stats.summary([1, 2, 3])
    assert s["n"] == 3 and s["p50"] == 2 and s["min"] == 1 and s["max"] == 3
    assert stats.summary([]) == {"n": 0}


def test_busy_share_counts_only_time_with_work_waiting():
    # Three slots: full from 1 to 3; work waits from 0 to 2 → full for 1 s of the 2 s of waiting.
    sessions = [(0, 3), (1, 3), (1, 4)]
    share = stats.busy_share(sessions, [(0, 2)], 3, 0, 4)
    assert share["waiting_s"] == pytest.approx(2)
    assert share["full_while_waiting_s"] == pytest.approx(1)
    assert share["share_full_while_waiting"] == pytest.approx(0.5)
    assert share["share_full_of_span"] == pytest.approx(0.5)
    assert math.isnan(stats.busy_share(sessions, [], 3, 0, 4)["share_full_while_waiting"])
    assert stats.max_overlap(sessions) == 3


def test_backlog_and_script_shapes():
    items = throughput.backlog(10)
    assert [i for i, _, d in items if d] == ["bx-04", "bx-09"]
    assert items[4][2] == ["bx-03"]
    script = throughput.opencode_script(items[:2], 0.5)
    assert [s["match"] for s in script["scenarios"]] == ["Issue bx-00 (", "Issue bx-01 ("]
    assert script["scenarios"][0]["delay"] == 0.5


def test_verdicts_and_results_file(tmp_path):
    assert run.verdict(0.3, 1.0, False) == "met"
    assert run.verdict(1.5, 1.0, False).startswith("MISSED by 0.50")
    assert run.verdict(2.0, 2.7, True).startswith("MISSED")
    assert run.verdict(None, 1.0, False) == "not measured"
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# R\n\nintro\n\n{run.BEGIN}\nold\n{run.END}\n\n## Analysis\nkept\n")
    run.write_results(f"{run.BEGIN}\nnew\n{run.END}", path)
    text = path.read_text()
    assert "new" in text and "old" not in text and "kept" in text and "intro" in text


def test_engine_bench_on_a_few_runs(tmp_path):
    result = engine.bench_engine(tmp_path, burst=5, sequential=2)
    assert result["burst"]["runs"] == 5 and result["burst"]["runs_per_s"] > 0
    seq = result["sequential"]
    assert seq["runs"] == 2 and seq["step_to_next_step_ms"]["n"] == 6
    assert seq["submit_to_first_step_ms"]["p50"] >= 0


def test_repo_and_the_sequential_loop_on_two_issues(tmp_path):
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    script = tmp_path / "agent.py"
    script.write_text(rig.AGENT_SCRIPT)
    repo = rig.make_repo(tmp_path / "repo", agent_script=script, stamps=stamps, gate=True)
    issues = rig.Issues(repo, "jsonl")
    t = issues.create("bx-00", "First")
    issues.create("bx-01", "Second", deps=["bx-00"])
    assert t > 0
    out = sequential_loop(repo)
    assert [i["id"] for i in out["issues"]] == ["bx-00", "bx-01"]
    assert all(i["agent_start"] <= i["agent_end"] <= i["end"] for i in out["issues"])
    assert rig.read_stamps(stamps, "bx-00") and rig.read_stamps(stamps, "bx-01", "end")
    assert (repo / "work" / "bx-01.txt").exists()
    assert rig.git(repo, "log", "--format=%s", "-1") == "Second (bx-01)"


def test_rss_of_this_process():
    assert (machine.rss_kb(os.getpid()) or 0) > 1000
    assert isinstance(machine.descendants(os.getpid()), list)
    facts = machine.machine_facts()
    assert facts["nproc"] and facts["python"] and facts["command"].startswith("python")


def test_turnover_measures_how_long_a_freed_slot_stays_empty():
    # Two slots: (0,2) and (0,5) run; the first ends at 2, the next starts at 2.5 while one still runs.
    assert stats.turnover([(0, 2), (0, 5), (2.5, 4)], 2) == [pytest.approx(0.5)]


def test_the_bench_knows_a_runner_started_from_its_structured_log_and_by_pid(tmp_path):
    """The benches wait for `runner started` in .beads-runner/logs/runner.jsonl, as a record of that
    runner (its pid), never by matching text: a line being written or another runner's record does not count."""
    from bench.rig import runner_started

    logs = tmp_path / ".beads-runner" / "logs"
    assert not runner_started(tmp_path, 4242)  # no log yet
    logs.mkdir(parents=True)
    (logs / "runner.jsonl").write_text(
        json.dumps({"event": "runner started", "pid": 1111}) + "\n"
        + json.dumps({"event": "engine busy: runner started?", "pid": 4242}) + "\n"
        + '{"event": "runner started", "pid": 42')  # half-written
    assert not runner_started(tmp_path, 4242)
    with (logs / "runner.jsonl").open("a") as fh:
        fh.write("42}\n")
    assert runner_started(tmp_path, 4242)


def test_a_real_runner_logs_its_start_with_its_pid(tmp_path):
    from bench.rig import AGENT_SCRIPT, Daemon, make_repo, tracker_env

    script = tmp_path / "agent.py"
    script.write_text(AGENT_SCRIPT)
    repo = make_repo(tmp_path / "repo", agent_script=script, stamps=tmp_path / "stamps")
    daemon = Daemon(repo, tracker_env("jsonl"), tmp_path / "daemon.log").start()
    try:
        daemon.wait_started(timeout=120)
    finally:
        daemon.stop()
