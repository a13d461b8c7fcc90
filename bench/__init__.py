"""Benchmarks of beads-runner: pickup latency, runner overhead, slot use, throughput against the
sequential loop peers use, daemon memory and the embedded engine alone. Run `python -m bench.run`."""
