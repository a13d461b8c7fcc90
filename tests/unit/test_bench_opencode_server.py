"""bench/opencode_server.py's report: verdicts from the figures, and its own place in RESULTS.md.
Structure only: nothing here runs opencode or is timed."""

from __future__ import annotations

from bench import opencode_server as bench


def _results(server_cpu: float, server_wall: float) -> dict:
    session = {"ok": True, "wall_s": 10.0, "opencode_cpu_s": 1.0, "runner_cpu_s": 0.01, "cpu_s": 1.01}
    cpu = {"sessions": [session] * 3, "startup": {"cpu_s": 1.8, "wall_s": 2.0}, "opencode_cpu_s_median": 1.0,
           "runner_cpu_s_median": 0.01, "wall_s_median": 10.0}
    side = {"wall_s": 0.0, "cpu_s": 20.0, "cpu_s_per_issue": 2.2, "landed": 9, "retries": 0,
            "max_concurrent_sessions": 3, "session_s_median": 12.0,
            "rss_three_sessions": {"samples": 10, "daemon_mb": 50.0, "agents_mb": 800.0, "total_mb": 850.0}}
    return {
        "machine": {"date_utc": "2026-12-01 00:00:00 UTC", "nproc": 2, "cpu": "x", "mem_total": "1 kB",
                    "opencode": "1.18.33", "loadavg_start": "0 0 0", "commit": "abc"},
        "loadavg_end": "0 0 0", "elapsed_s": 100.0, "issues": 9, "delay": 4.0,
        "cpu_run": {**cpu, "cpu_s_median": 6.0}, "cpu_server": {**cpu, "cpu_s_median": server_cpu},
        "loop": {"wall_s": 150.0, "cpu_s": 50.0, "cpu_s_per_issue": 5.5, "landed": 9},
        "runner_run": {**side, "wall_s": 75.0}, "runner_server": {**side, "wall_s": server_wall},
    }


def test_verdicts_follow_the_targets():
    met = bench.render(_results(server_cpu=1.9, server_wall=50.0))  # 32 % of run's CPU, 3.0x the loop
    assert "| ≤ 1/3 of run | met |" in met and "3.00× | ≥ 2.6× | met |" in met
    missed = bench.render(_results(server_cpu=3.0, server_wall=60.0))  # 50 %, 2.5x
    assert "(50% of run) | ≤ 1/3 of run | MISSED |" in missed and "2.50× | ≥ 2.6× | MISSED |" in missed


def test_the_section_goes_before_the_analysis_and_is_replaced_in_place(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\ngenerated\n\n## Analysis\n\nby hand\n")
    bench.write_results(bench.render(_results(1.9, 50.0)), path)
    first = path.read_text()
    assert first.index(bench.BEGIN) < first.index("## Analysis") and first.endswith("by hand\n")
    bench.write_results(bench.render(_results(3.0, 60.0)), path)
    second = path.read_text()
    assert second.count(bench.BEGIN) == 1 and "MISSED" in second and "by hand" in second
