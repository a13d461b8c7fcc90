"""Coding agents: `opencode` (the default) and `command` (any CLI that reads the prompt on stdin)."""

from __future__ import annotations

from pathlib import Path

from beads_runner.agent.base import Agent, ProviderRetry, SessionRequest, SessionResult, TokenUsage
from beads_runner.config import AgentConfig

__all__ = ["Agent", "ProviderRetry", "SessionRequest", "SessionResult", "TokenUsage", "make_agent"]


def make_agent(config: AgentConfig, repo_root: Path) -> Agent:
    """The agent `config.kind` names. Nothing is started or resolved yet."""
    if config.kind == "opencode" and config.mode == "server":
        from beads_runner.agent.opencode_server import OpenCodeServerAgent

        return OpenCodeServerAgent(config, repo_root)
    if config.kind == "opencode":
        from beads_runner.agent.opencode import OpenCodeAgent

        return OpenCodeAgent(config, repo_root)
    if config.kind == "command":
        from beads_runner.agent.command import CommandAgent

        return CommandAgent(config, repo_root)
    raise ValueError(f"unknown agent kind {config.kind!r}")  # AgentConfig only allows the two above
