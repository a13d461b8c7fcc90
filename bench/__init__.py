"""Benchmarks of beads-runner: pickup latency, runner overhead, slot use, throughput against the
sequential loop peers use, daemon memory and the embedded engine alone. Run `python -m bench.run`.

One module per measure: engine.py, pickup.py, throughput.py (all three run by run.py, which also
renders their section of RESULTS.md), bd_calls.py, hatchet_engine.py (with hatchet_record.py and
hatchet_report.py) and opencode_server.py, each with a `python -m bench.<name>` of its own. Shared:
rig.py (repositories, the daemon as a process, the `command` agent, the engine's record),
machine.py (machine facts, memory), stats.py (percentiles, slot use) and report.py (timing each
measure, raw results, each section of RESULTS.md). baseline.py is the sequential loop compared against.
"""
