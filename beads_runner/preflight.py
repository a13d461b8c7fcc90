"""`beads-runner start` before the loop: the state directory is writable, the target branch, the
gates' programs, the tracker and the agent are usable; `--dry-run`; the signal handlers of a
graceful stop; and how `submit --wait` reports a finished run."""

from __future__ import annotations

import os
import signal

import click

from beads_runner.errors import ConfigError, RunnerError
from beads_runner.safe_text import one_line, printable
from beads_runner.services import Services


def require_writable_state(svc: Services) -> None:
    """The runner keeps its state under .beads-runner/: unwritable, nothing could be recorded."""
    probe = svc.state_dir / f".write-test-{os.getpid()}"
    try:
        svc.state_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise RunnerError(f"{svc.state_dir} is not writable: {exc.strerror or exc}",
                          fix=f"make {svc.state_dir} writable by this user (free space, a writable mount), "
                              "then start again") from None


def preflight(svc: Services, steps_run_here: bool = True) -> None:
    """Fail before claiming anything if the tracker, the agent or the target branch is unusable.
    The gates and the agent are checked where the steps run (for Hatchet: `worker` checks them)."""
    svc.workspace.check_target()
    if steps_run_here:
        from quality_gates.gates import missing_commands

        missing = missing_commands(svc.gates, svc.repo)
        if missing:
            raise ConfigError(f"gate command not found: {', '.join(missing)}",
                              fix="install the tool, or correct the gate's `run` in .beads-runner.toml "
                                  "(a relative path is taken from the repository root)")
    svc.tracker.version()
    if not steps_run_here:
        return
    resolve = getattr(svc.agent, "resolve_executable", None)
    if resolve is not None:
        resolve()


def install_signal_handlers(runner) -> None:
    state = {"count": 0}

    def handler(signum, _frame):
        state["count"] += 1
        if state["count"] == 1:
            then = (f"running sessions get {runner.cfg.engine.grace_period:g}s to finish (signal again to stop now)"
                    if runner.engine.steps_run_here else "runs in flight go on on the workers")
            click.echo(f"\n{signal.Signals(signum).name}: no new claims; {then}", err=True)
            runner.request_stop()
        else:
            click.echo("stopping now; unfinished runs resume at the next start", err=True)
            runner.engine.cancel_running()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def dry_run(svc: Services) -> None:
    from beads_runner.ids import is_safe_issue_id
    from beads_runner.prompt import load_template, render_prompt

    issues = svc.tracker.ready()
    cap = svc.config.engine.max_sessions
    if not issues:
        click.echo("nothing is ready")
        return
    click.echo(f"{len(issues)} ready; would claim up to {cap} now (nothing was changed):")
    template = load_template(svc.state_dir)
    for n, issue in enumerate(issues):
        if not is_safe_issue_id(issue.id):
            click.echo(f"  REFUSED {printable(repr(issue.id))}: not safe as a branch and path name")
            continue
        mark = "claim" if n < cap else "later"
        click.echo(f"  [{mark}] {issue.id}  P{issue.priority}  {one_line(issue.title, 200)}")
    first = next((i for i in issues if is_safe_issue_id(i.id)), None)
    if first is not None:
        click.echo(f"\n--- prompt for {first.id} ---")
        click.echo(render_prompt(first, template, svc.config.land.target))


def print_outcome(view) -> None:
    from workflows.task_flow import did_no_work

    if view.status == "succeeded":
        out = view.outcome or {}
        if did_no_work(out):
            click.echo(f"{view.key}: skipped ({out.get('reason')})")
        else:
            click.echo(f"{view.key}: {out.get('close_reason')}")
    else:
        click.echo(f"{view.key}: {view.status} at {view.failed_step}: {view.error}")
