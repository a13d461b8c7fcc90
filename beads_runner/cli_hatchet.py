"""`beads-runner worker` and `beads-runner hatchet up|status`: the commands of the Hatchet engine."""

from __future__ import annotations

import sys

import click

from beads_runner.cli_context import services_of as _services
from beads_runner.logs import configure_logging


@click.command()
@click.option("--name", default=None, help="Worker name (default: beads-runner-<host>).")
@click.pass_context
def worker(ctx: click.Context, name: str | None) -> None:
    """Run the workflow's steps for a Hatchet engine (engine.kind = "hatchet")."""
    from workflows.hatchet import run_worker

    svc = _services(ctx)
    configure_logging(svc.state_dir / "logs", verbose=ctx.obj["verbose"])
    svc.enter_sandbox()
    run_worker(svc, name=name)


# --- a local Hatchet engine ---------------------------------------------------------------------
@click.group()
def hatchet() -> None:
    """A Hatchet engine on this machine, without Docker (see docs/hatchet.md)."""


@hatchet.command("up")
@click.option("--ready-timeout", type=float, default=180.0, show_default=True,
              help="Seconds to wait for the engine to answer.")
@click.pass_context
def hatchet_up(ctx: click.Context, ready_timeout: float) -> None:
    """Run a local Hatchet engine in the foreground until Ctrl-C or SIGTERM.

    It writes the client settings to .beads-runner/hatchet/client.env, which start, worker, submit,
    status, logs, review and doctor read when HATCHET_CLIENT_TOKEN is not set."""
    from beads_runner.hatchet_local import serve

    svc = _services(ctx)
    configure_logging(svc.state_dir / "logs", verbose=ctx.find_root().obj["verbose"])
    sys.exit(serve(svc.state_dir, svc.config.engine.hatchet, ready_timeout=ready_timeout))


@hatchet.command("status")
@click.pass_context
def hatchet_status(ctx: click.Context) -> None:
    """Say whether the local engine of this repository is up (exit 0) or not (exit 1)."""
    from beads_runner.config import STATE_DIR
    from beads_runner.hatchet_local import engine_status

    up, text = engine_status(ctx.find_root().obj["repo"] / STATE_DIR)
    click.echo(text)
    sys.exit(0 if up else 1)
