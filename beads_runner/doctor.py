"""`beads-runner doctor`: every prerequisite checked, each problem with its fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from beads_runner.config import CONFIG_FILE, load_config
from beads_runner.errors import RunnerError
from beads_runner.services import Services


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None


def _check(name: str, fn) -> Check:
    try:
        return Check(name, True, fn())
    except RunnerError as exc:
        return Check(name, False, exc.message, exc.fix)
    except Exception as exc:  # noqa: BLE001 - doctor reports, it never crashes
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def _describe_mode(mode: str) -> str:
    if mode == "embedded":
        return "embedded Dolt store: one writer at a time"
    if mode.startswith("server"):
        return f"Dolt {mode}"
    return f"store mode {mode}"


def run_checks(repo: Path) -> list[Check]:
    checks: list[Check] = []
    try:
        config = load_config(repo)
        where = repo / CONFIG_FILE
        checks.append(Check("config", True, str(where) if where.exists() else "no config file: all defaults",
                            None))
    except RunnerError as exc:
        checks.append(Check("config", False, exc.message, exc.fix))
        return checks
    svc = Services(repo, config)

    def git_check() -> str:
        sha = svc.workspace.check_target()
        return f"{repo} on git {svc.workspace.repo.git.version().removeprefix('git version ')}; " \
               f"target {config.land.target} at {sha[:8]}"

    checks.append(_check("git", git_check))

    def tracker_check() -> str:
        version = svc.tracker.version()
        ready = svc.tracker.ready()
        if config.tracker.kind == "bd":
            mode = svc.tracker.store_mode() if hasattr(svc.tracker, "store_mode") else "unknown"
            name = f"bd {version} ({_describe_mode(mode)}) at {svc.tracker.executable()}"
        else:
            name = f"jsonl at {config.tracker.path}"
        return f"{name}; {len(ready)} issue(s) ready"

    checks.append(_check("tracker", tracker_check))

    def agent_check() -> str:
        agent = svc.agent
        exe = agent.resolve_executable() if hasattr(agent, "resolve_executable") else config.agent.command
        version = agent.version() if hasattr(agent, "version") else "?"
        model = config.agent.model or "(opencode's default model)"
        mode = f" (mode {config.agent.mode})" if config.agent.kind == "opencode" else ""
        return f"{config.agent.kind} {version} at {exe}{mode}; model {model}"

    checks.append(_check("agent", agent_check))

    def engine_check() -> str:
        from workflows.engine import open_engine

        return open_engine(svc).describe()

    checks.append(_check("engine", engine_check))

    if config.engine.kind == "hatchet" and config.land.push:
        def shared_tracker_check() -> str:
            # Several machines (land.push) work one backlog only if they all read and claim in one tracker.
            if config.tracker.kind == "jsonl":
                raise RunnerError("land.push = true (several machines) with the jsonl tracker: each clone has its "
                                  "own .beads/issues.jsonl, so two machines can claim the same issue",
                                  fix="use bd with one shared database (bd's server mode, or a Dolt remote every "
                                      "machine syncs), or run start and all workers on one machine (land.push = false)")
            return ("bd: every machine must reach the same bd database (bd's server mode or a shared Dolt remote); "
                    "claims are read back, so a stale copy loses the claim rather than working an issue twice")

        checks.append(_check("shared tracker", shared_tracker_check))

    def gates_check() -> str:
        if not config.gates:
            return "no gates configured (add [[gates]] so work is checked before it lands)"
        from quality_gates.gates import missing_commands

        missing = missing_commands(svc.gates, repo)
        if missing:
            raise RunnerError(f"gate command not found for: {', '.join(missing)}",
                              fix="install the tool or correct its `run` in .beads-runner.toml")
        return ", ".join(f"{g.name}: {g.run}" for g in config.gates)

    checks.append(_check("gates", gates_check))

    def sandbox_check() -> str:
        from beads_runner import sandbox

        return sandbox.resolve(config.sandbox, repo).describe()

    checks.append(_check("sandbox", sandbox_check))
    return checks


def render_checks(checks: list[Check], *, terminal: bool) -> str:
    """The checks as a table: `[ok  ]`/`[FAIL]`, the name, what was found and, for a problem, its fix.

    On a terminal it fits the width (long details wrap in their column) and FAIL is red; in a pipe
    each row stays on its line, uncoloured, so that `grep` finds it."""
    from rich.table import Table

    from beads_runner.tables import table_text
    from rich.text import Text

    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column("check", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for c in checks:
        detail = Text(c.detail)
        if not c.ok and c.fix:
            detail.append(f"\nfix: {c.fix}")
        mark = ("[ok  ]", "") if c.ok else ("[FAIL]", "bold red")
        table.add_row(Text.assemble(mark, " ", c.name), detail)
    return table_text(table, terminal=terminal)
