"""`beads-runner gates [--json]`: the configured gates, on the current tree, for people and CI.

The diff gates measure the checkout (committed or not, untracked included) against its merge-base
with `[land] target` (or `origin/<target>` where only that exists, as in CI). An empty change is not
an error here: checking a clean tree is a normal thing to do.
"""

from __future__ import annotations

from pathlib import Path

from beads_runner.config import load_config
from beads_runner.errors import ConfigError
from quality_gates.change import ChangeError, repo_toplevel
from quality_gates.factory import gates_from_config
from quality_gates.gates import run_suite

EXIT_PASSED, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2


def run_gates_command(repo: Path, as_json: bool, *, target: str | None = None,
                      log_dir: Path | None = None) -> tuple[int, str]:
    """(exit code, text to print): 0 all gates passed, 1 one failed or errored, 2 config unusable."""
    repo = Path(repo).resolve()
    try:
        root = repo_toplevel(repo)
    except ChangeError:
        root = repo  # not a git repository: the command gates still run, the diff gates say why they cannot
    try:
        config = load_config(root)
    except ConfigError as exc:
        return EXIT_UNUSABLE, exc.render()
    gates = gates_from_config(config, target=target, require_change=False)
    if not gates:
        report_text = '{"passed": true, "summary": "no gates configured", "trailer": "none", "reports": []}'
        return EXIT_PASSED, report_text if as_json else "no gates configured (add [[gates]] to .beads-runner.toml)"
    report = run_suite(gates, root, target=target or config.land.target, log_dir=log_dir)
    text = report.render_json() if as_json else report.render_text() + "\n" + (
        "PASSED: " if report.passed else "FAILED: ") + report.summary()
    return (EXIT_PASSED if report.passed else EXIT_FAILED), text
