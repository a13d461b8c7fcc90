"""Issue trackers: `bd` (the real CLI) and `jsonl` (beads' export format, for repos without bd)."""

from __future__ import annotations

from pathlib import Path

from beads_runner.config import TrackerConfig
from beads_runner.tracker.base import Blocker, Issue, Tracker


def make_tracker(config: TrackerConfig, repo: Path) -> Tracker:
    """The tracker `config.kind` names, for the repository at `repo`."""
    if config.kind == "bd":
        from beads_runner.tracker.bd import BdTracker

        return BdTracker(repo, command=config.command, actor=config.actor, timeout=config.timeout)
    if config.kind == "jsonl":
        from beads_runner.tracker.jsonl import JsonlTracker

        return JsonlTracker(repo, path=config.path, actor=config.actor)
    raise ValueError(f"unknown tracker kind {config.kind!r}")  # config validation makes this unreachable


__all__ = ["Blocker", "Issue", "Tracker", "make_tracker"]
