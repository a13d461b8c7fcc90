"""The `beads-runner` command line."""

from __future__ import annotations

import errno
import json
import sys
import time
from pathlib import Path

import click

from beads_runner import __version__
from beads_runner.cli_context import repo_root as _repo_root
from beads_runner.cli_context import services_of as _services
from beads_runner.cli_hatchet import hatchet, worker
from beads_runner.errors import RunnerError
from beads_runner.logs import configure_logging, default_to_stderr
from beads_runner.preflight import dry_run as _dry_run
from beads_runner.preflight import install_signal_handlers as _install_signal_handlers
from beads_runner.preflight import preflight as _preflight
from beads_runner.preflight import print_outcome as _print_outcome
from beads_runner.preflight import require_writable_state as _require_writable_state
from beads_runner.safe_text import printable
from beads_runner.services import Services


class _Group(click.Group):
    """Prints RunnerErrors as `error: … / fix: …` with exit status 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RunnerError as exc:
            click.echo(f"error: {exc.render()}", err=True)
            sys.exit(2)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
                raise
            where = exc.filename or "a file"
            click.echo(f"error: cannot write {where}: {exc.strerror}\n  fix: make it writable by this user (free "
                       "space, a writable mount), then run again; nothing was lost", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="beads-runner")
@click.option("--repo", type=click.Path(file_okay=False), default=None,
              help="The repository (default: the git repository of the current directory).")
@click.option("-v", "--verbose", is_flag=True, help="Debug output.")
@click.pass_context
def main(ctx: click.Context, repo: str | None, verbose: bool) -> None:
    """Turn ready beads issues into landed, gated commits written by OpenCode."""
    ctx.ensure_object(dict)
    default_to_stderr()
    ctx.obj["repo"] = _repo_root(repo)
    ctx.obj["verbose"] = verbose


# --- init / doctor ------------------------------------------------------------------------------
@main.command()
@click.option("--force", is_flag=True, help="Overwrite an existing configuration.")
@click.option("--print", "print_only", is_flag=True, help="Print the configuration instead of writing it.")
@click.pass_context
def init(ctx: click.Context, force: bool, print_only: bool) -> None:
    """Write a commented .beads-runner.toml and ignore .beads-runner/ in git."""
    from beads_runner.init import init_repo, render_config

    repo: Path = ctx.obj["repo"]
    if print_only:
        click.echo(render_config(repo), nl=False)
        return
    for line in init_repo(repo, force=force):
        click.echo(line)


@main.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Check git, the tracker, the agent, the config and the engine; say how to fix each problem."""
    from beads_runner.doctor import render_checks, run_checks

    checks = run_checks(ctx.obj["repo"])
    click.echo(render_checks(checks, terminal=sys.stdout.isatty()))
    sys.exit(0 if all(c.ok for c in checks) else 1)


# --- running ------------------------------------------------------------------------------------
@main.command()
@click.option("--once", is_flag=True, help="Work until nothing is ready or running, then exit (1 if a run failed).")
@click.option("--dry-run", is_flag=True, help="Show what would be claimed and the prompt; change nothing.")
@click.option("--poll-interval", type=float, default=None, help="Seconds between polls (default: config).")
@click.option("--ui", "with_ui", is_flag=True, help="Also serve the console (docs/console.md) from this process.")
@click.option("--ui-host", default="127.0.0.1", show_default=True, help="Address the console binds (with --ui).")
@click.option("--ui-port", default=8765, show_default=True, type=int, help="Port of the console (with --ui).")
@click.pass_context
def start(ctx: click.Context, once: bool, dry_run: bool, poll_interval: float | None, with_ui: bool,
          ui_host: str, ui_port: int) -> None:
    """Poll the tracker, claim ready issues and run them through the workflow."""
    svc = _services(ctx)
    if dry_run:
        _dry_run(svc)
        return
    from beads_runner.daemon import start as start_runner

    _require_writable_state(svc)
    configure_logging(svc.state_dir / "logs", verbose=ctx.obj["verbose"])

    def on_runner(runner) -> None:
        _install_signal_handlers(runner)
        if with_ui:  # after the preflight, before the first claim: a taken port stops start here
            _serve_console(svc, runner.engine, ui_host, ui_port)

    sys.exit(start_runner(svc, once=once, poll_interval=poll_interval, preflight=_preflight, on_runner=on_runner))


def _serve_console(svc: Services, engine, host: str, port: int) -> None:
    """`start --ui`: the console in a thread of this process, reading this runner's engine."""
    from beads_runner.console.app import start_in_thread, url_for

    start_in_thread(svc, engine, host, port)
    click.echo(f"console on {url_for(host, port)} (actions need the token in {svc.state_dir / 'ui.token'})", err=True)


@main.command()
@click.argument("issue_id")
@click.option("--wait", is_flag=True, help="Run it here and wait for the result.")
@click.pass_context
def submit(ctx: click.Context, issue_id: str, wait: bool) -> None:
    """Run one issue now (it is claimed by its check-deps step)."""
    from beads_runner.actions import submit_issue
    from beads_runner.ids import require_safe_issue_id
    from workflows.engine import SUCCEEDED, open_engine

    require_safe_issue_id(issue_id)
    svc = _services(ctx)
    configure_logging(svc.state_dir / "logs", verbose=ctx.obj["verbose"], console=wait)
    engine = open_engine(svc)
    if wait and engine.steps_run_here:
        svc.enter_sandbox()  # the steps run in this process: confined before the run is submitted
    done = submit_issue(svc, issue_id, engine=engine)  # the console's Submit takes this very path
    run_id, created = done["run_id"], done["created"]
    url = engine.dashboard_url(run_id)
    click.echo(f"{'submitted' if created else 'already running'}: {issue_id} as {run_id}"
               + (f" ({url})" if url else ""))
    if not wait:
        click.echo("a running `beads-runner start` picks it up; or use --wait to wait for it here")
        return
    engine.start()
    try:
        view = engine.wait(run_id)
    except KeyboardInterrupt:
        engine.stop()
        click.echo("interrupted; the run goes on at the next start", err=True)
        sys.exit(130)
    engine.stop()
    if view is None:
        raise RunnerError(f"run {run_id} cannot be read back", fix="`beads-runner status` shows the runs")
    _print_outcome(view)
    sys.exit(0 if view.status == SUCCEEDED else 1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--target", default=None, help="Compare against this branch (default: [land] target).")
@click.pass_context
def gates(ctx: click.Context, as_json: bool, target: str | None) -> None:
    """Run the configured quality gates (and diff checks) on the current tree, as the runner would."""
    from quality_gates.command_line import run_gates_command

    code, text = run_gates_command(ctx.obj["repo"], as_json, target=target)
    click.echo(text)
    sys.exit(code)


# --- seeing -------------------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (keys below).")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option("--limit", default=20, show_default=True, help="Finished runs to show.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, watch: bool, limit: int) -> None:
    """Running, queued and blocked issues, sessions in use, last failures and today's spending.

    \b
    --json prints one object with stable keys:
      repo, generated_at (Unix time)
      sessions  {in_use, cap}
      spending  {day (UTC), spent_usd, budget_usd (null: none), exceeded, message}
      parked    [{scope, kind (quota|auth|budget), reason, since, until (null: until resume),
                  until_resume, change, issue_id, run_id, strikes}]
      running, queued, blocked, recent: lists of runs, each with
        run_id, run (short id), issue_id, title, status, phase, step, step_status,
        attempt, max_attempts, retry_at, elapsed_s, created_at, finished_at,
        failed_step, error, outcome, commit, steps, attempts, sessions, tokens, cost,
        reason {code, summary, change, ...} (the codes of `explain`),
        handover_recorded_locally
      failures  [{issue_id, run_id, run, step, attempt, at, reason, final}]
    With --watch, --json prints one such object (on one line) a second.
    """
    from beads_runner.status import collect_status, render_status, render_text, watch_status

    svc = _services(ctx)
    if watch and not as_json:
        watch_status(svc, limit=limit)
        return
    try:
        while True:
            data = collect_status(svc, limit=limit)
            if as_json:
                click.echo(json.dumps(data, separators=(",", ":")) if watch else json.dumps(data, indent=2))
            elif sys.stdout.isatty():
                from rich.console import Console

                Console().print(render_status(data))
            else:
                click.echo(render_text(render_status(data)))
            if not watch:
                return
            time.sleep(1.0)
    except KeyboardInterrupt:
        return


@main.command()
@click.argument("ref")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until the run ends.")
@click.option("--json", "as_json", is_flag=True, help="Raw events, one JSON object a line.")
@click.pass_context
def logs(ctx: click.Context, ref: str, follow: bool, as_json: bool) -> None:
    """A run's step events and its agent's events, interleaved by time (REF: an issue id, a run id or
    its short form). The issue's latest run is shown.

    \b
    --json: engine events as {"source": "engine", id, run_id, step, ts, event, ...};
    agent events as opencode wrote them (other output as {"source": "agent", attempt, type, text}).
    """
    from beads_runner.status import stream_logs

    svc = _services(ctx)
    try:
        for line in stream_logs(svc, ref, follow=follow, as_json=as_json):
            # JSON escapes control characters itself; text lines carry the agent's words raw.
            click.echo(line if as_json else printable(line, keep_newlines=True))
    except KeyboardInterrupt:
        return


@main.command()
@click.argument("issue_id", required=False)
@click.option("--since", default=None, help="Only commits after this date (git's date formats).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def review(ctx: click.Context, issue_id: str | None, since: str | None, as_json: bool) -> None:
    """Landed commits, found by their Beads-Issue trailer; with ISSUE_ID, also its whole history.

    \b
    --json: {target, since, issue_id, commits: [{sha, issue_id, title, subject, date, author,
    run_id, agent, gates, attempts, duration_s, tokens, cost, diff_command}], history: null, or
    every run of ISSUE_ID: [{run_id, status, phase, result, failed_step, error, commit, attempts,
    sessions, tokens, cost, ...}]}
    """
    from beads_runner.status import render_review, review_data

    svc = _services(ctx)
    data = review_data(svc, issue_id=issue_id, since=since)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(printable(render_review(data, terminal=sys.stdout.isatty()), keep_newlines=True))


@main.command()
@click.argument("issue_ids", nargs=-1)
@click.option("--since", default=None, help="Issues landed after this date (git's date formats).")
@click.option("--gates", "with_gates", is_flag=True, help="Also run the gates at each landed commit.")
@click.option("--reopen", "reopen_mismatches", is_flag=True, help="Reopen each mismatch, with a comment.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def verify(ctx: click.Context, issue_ids: tuple[str, ...], since: str | None, with_gates: bool,
           reopen_mismatches: bool, as_json: bool) -> None:
    """Re-prove closed issues: the trailer commit is on the target, the close reason names it, and
    (--gates) the gates pass at it. Without ISSUE_IDS: every issue landed on the target. Exit 1 on
    any mismatch.

    \b
    --json: [{issue_id, ok, status, commit, close_reason, gates, problems, reopened}]
    """
    from beads_runner.verify import render_verdicts, run_verify

    svc = _services(ctx)
    verdicts = run_verify(svc, list(issue_ids), since=since, gates=with_gates, reopen_mismatches=reopen_mismatches)
    if as_json:
        click.echo(json.dumps([v.as_dict() for v in verdicts], indent=2))
    else:
        from rich.console import Console

        Console(width=None if sys.stdout.isatty() else 160).print(render_verdicts(verdicts, with_gates))
        bad = sum(1 for v in verdicts if not v.ok)
        click.echo(f"{len(verdicts)} issue(s) checked, {bad} mismatch(es)" if verdicts else "no landed issue to verify")
    sys.exit(1 if any(not v.ok for v in verdicts) else 0)


@main.command()
@click.argument("issue_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def explain(ctx: click.Context, issue_id: str, as_json: bool) -> None:
    """Why ISSUE_ID is or is not being worked on now, and what would change it.

    \b
    --json: {code, summary, change, issue_id, title, status, run_id, ...details of the code};
    the codes are listed in docs/reliability.md and appear in `status --json` as each run's `reason`.
    """
    from beads_runner.explain import explain as explain_issue, render

    reason = explain_issue(_services(ctx), issue_id)
    click.echo(json.dumps(reason.as_dict(), indent=2, default=str) if as_json else render(reason))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback makes every request need the token.")
@click.option("--port", default=8765, show_default=True, type=int, help="TCP port.")
@click.option("--open", "open_browser", is_flag=True, help="Open it in a browser (with the token, for actions).")
@click.pass_context
def ui(ctx: click.Context, host: str, port: int, open_browser: bool) -> None:
    """Serve the operator's console: runs, steps, logs, charts, submit/retry/cancel (docs/console.md).

    It reads the engine's state, so it works while `start` runs (in another process) and after."""
    from beads_runner.console.app import serve

    svc = _services(ctx)
    configure_logging(svc.state_dir / "logs", verbose=ctx.obj["verbose"], console=False)
    try:
        serve(svc, host, port, open_browser=open_browser, echo=click.echo)
    except KeyboardInterrupt:
        return


# --- a person's hand ------------------------------------------------------------------------------
@main.command()
@click.argument("issue_id")
@click.option("--fresh", is_flag=True, help="Start from the target branch (the old branch is renamed and kept).")
@click.option("--by", default=None, help="Who asks (default: $BEADS_RUNNER_PERSON or the login name).")
@click.pass_context
def retry(ctx: click.Context, issue_id: str, fresh: bool, by: str | None) -> None:
    """Run an issue that was handed to a person again: remove needs-human, reopen it, submit a run."""
    from beads_runner.actions import retry_issue

    svc = _services(ctx)
    configure_logging(svc.state_dir / "logs", verbose=ctx.obj["verbose"], console=False)
    done = retry_issue(svc, issue_id, fresh=fresh, by=by)
    start = "afresh from the target" if fresh else "from its kept branch"
    click.echo(f"{issue_id}: reopened and submitted as {done['run_id']}, {start}"
               + (f"; the earlier work is on {done['kept_branch']}" if done["kept_branch"] else ""))
    click.echo("a running `beads-runner start` picks it up")


@main.command()
@click.argument("issue_id")
@click.option("--by", default=None, help="Who cancels (default: $BEADS_RUNNER_PERSON or the login name).")
@click.option("--wait", "wait_s", default=30.0, show_default=True, help="Seconds to wait for the run to stop.")
@click.pass_context
def cancel(ctx: click.Context, issue_id: str, by: str | None, wait_s: float) -> None:
    """Stop an issue's run now; keep its branch; hand the issue to a person, saying who cancelled it."""
    from beads_runner.actions import cancel_issue

    svc = _services(ctx)
    configure_logging(svc.state_dir / "logs", verbose=ctx.obj["verbose"], console=False)
    done = cancel_issue(svc, issue_id, by=by, wait=wait_s)
    if done["done"]:
        click.echo(f"{issue_id}: run {done['run_id']} cancelled by {done['by']}; the issue is with a person, "
                   f"its branch kept")
    else:
        click.echo(f"{issue_id}: cancel of {done['run_id']} requested; the runner running it stops it "
                   f"(status now {done['status']})")


@main.command()
@click.option("--raise-budget", "raise_budget", type=float, default=None,
              help="Today's (UTC) daily budget in dollars, over agent.daily_budget_usd.")
@click.pass_context
def resume(ctx: click.Context, raise_budget: float | None) -> None:
    """End every park (a provider's quota or refused credentials) now; optionally raise today's budget."""
    from beads_runner.actions import resume as resume_parks
    from beads_runner.notify import Notifier

    svc = _services(ctx)
    done = resume_parks(svc, raise_budget=raise_budget)
    notifier = Notifier(svc.config.notify, repo=str(svc.repo)).start()
    for park in done["resumed"]:
        click.echo(f"resumed {park['scope']} (was parked: {park['reason']})")
        notifier.emit("resumed", reason=f"{park['scope']}: resumed by hand", scope=park["scope"])
    if done["budget"]:
        click.echo(f"today's budget ({done['budget']['day']}, UTC) is now ${done['budget']['usd']:.2f}")
        if not done["resumed"]:
            notifier.emit("resumed", reason=f"daily budget raised to ${done['budget']['usd']:.2f}")
    if not done["resumed"] and not done["budget"]:
        click.echo("nothing was parked")
    notifier.close()


# --- the Hatchet engine (cli_hatchet.py) --------------------------------------------------------
main.add_command(worker)
main.add_command(hatchet)


# --- demo ---------------------------------------------------------------------------------------
@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--keep", is_flag=True, help="Keep an existing DIR's contents (default: start afresh).")
@click.option("--engine", type=click.Choice(["local", "hatchet"]), default="local", show_default=True,
              help="hatchet: run it on a local Hatchet engine (`hatchet up` and two workers, stopped at the "
                   "end; needs `make tools`).")
def demo(directory: str | None, keep: bool, engine: str) -> None:
    """Build a sample repository with issues and run the whole flow on it, offline."""
    from beads_runner.demo import run_demo

    target = Path(directory) if directory else Path.cwd() / f"beads-runner-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    sys.exit(run_demo(target.resolve(), fresh=not keep, engine=engine))


if __name__ == "__main__":
    main()
