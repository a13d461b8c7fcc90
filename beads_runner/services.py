"""Everything a step needs for one repository, built from its config: tracker, agent, git, gates.

Steps receive only the repository path in their input (so any engine, on any machine, can run
them); they get the rest from here. Built once per repository per process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from beads_runner.config import STATE_DIR, Config, load_config
from beads_runner.workspace import Workspace
from quality_gates import Gate
from quality_gates.factory import gates_from_config


@dataclass
class Services:
    repo: Path
    config: Config
    # Tests and embedders may inject their own implementations.
    tracker_override: object | None = None
    agent_override: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def state_dir(self) -> Path:
        return self.repo / STATE_DIR

    def run_dir(self, run_id: str) -> Path:
        path = self.state_dir / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def tracker(self):  # -> Tracker
        if self.tracker_override is not None:
            return self.tracker_override
        from beads_runner.tracker import make_tracker

        return make_tracker(self.config.tracker, self.repo)

    @cached_property
    def agent(self):  # -> Agent
        if self.agent_override is not None:
            return self.agent_override
        from beads_runner.agent import make_agent

        return make_agent(self.config.agent, self.repo)

    @cached_property
    def workspace(self) -> Workspace:
        land = self.config.land
        return Workspace(self.repo, land.target, self.state_dir, push=land.push, remote=land.remote)

    def enter_sandbox(self):  # -> sandbox.Sandbox
        """Confine every agent session and gate this process runs from now on, as `sandbox` says;
        SandboxUnavailable (error + fix) if it cannot work here. Called before any step runs."""
        from beads_runner import sandbox

        chosen = sandbox.resolve(self.config.sandbox, self.repo)
        sandbox.configure(chosen)
        return chosen

    @cached_property
    def gates(self) -> list[Gate]:
        # The diff gates, then the [[gates]] commands; all measured against [land] target.
        return gates_from_config(self.config, target=self.config.land.target)


_cache: dict[Path, Services] = {}
_cache_lock = threading.Lock()


def services_for(repo: Path | str) -> Services:
    """The process-wide Services of a repository (config read once)."""
    root = Path(repo).resolve()
    with _cache_lock:
        if root not in _cache:
            _cache[root] = Services(root, load_config(root))
        return _cache[root]


def register_services(services: Services) -> Services:
    """Make `services` the ones steps get for its repository (the CLI and tests call this)."""
    with _cache_lock:
        _cache[services.repo.resolve()] = services
    return services
