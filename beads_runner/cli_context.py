"""What every command of the `beads-runner` CLI starts from: the repository, and its services."""

from __future__ import annotations

import os
from pathlib import Path

import click

from beads_runner.config import load_config
from beads_runner.services import Services, register_services


def repo_root(path: str | None) -> Path:
    """The repository: --repo, else the git toplevel of the cwd, else the cwd."""
    start = Path(path or os.getcwd()).resolve()
    for candidate in (start, *start.parents):
        if (candidate / ".git").exists():
            return candidate
    return start


def services_of(ctx: click.Context) -> Services:
    obj = ctx.obj
    if "services" not in obj:
        repo = obj["repo"]
        obj["services"] = register_services(Services(repo, load_config(repo)))
    return obj["services"]
