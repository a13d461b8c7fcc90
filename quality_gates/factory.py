"""Gates from the runner's configuration: the `[diff]` gates first (they look at the agent's change
before any command can add build output to the worktree), then every `[[gates]]` command."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quality_gates.diff import diff_gates, protected_gate
from quality_gates.gates import CommandGate, Gate

if TYPE_CHECKING:
    from beads_runner.config import Config


def gates_from_config(config: Config, *, target: str | None = None, require_change: bool | None = None) -> list[Gate]:
    """`target` defaults to `[land] target`; `require_change` overrides `[diff] require_change`."""
    target = target or config.land.target
    gates: list[Gate] = []
    d = config.diff
    if d.enabled:
        gates += diff_gates(
            require_change=d.require_change if require_change is None else require_change,
            max_lines=d.max_lines, max_files=d.max_files, size_ignore=d.size_ignore, forbidden=d.forbidden,
            secrets=d.secrets, secrets_allow=d.secrets_allow, target=target, max_bytes=d.max_bytes,
            binary_allow=d.binary_allow,
        )
    else:  # the runner's and the agent's own configuration never land on their own, checks or not
        gates.append(protected_gate(target))
    y = config.yardstick
    if y.enabled:
        # Before any command runs: what the change does to the yardstick, read from git and the tree.
        from quality_gates.test_integrity import tests_gate
        from quality_gates.yardstick import yardstick_gate

        gates += [yardstick_gate([g.argv for g in config.gates], y.protected, label=y.gates_label, target=target),
                  tests_gate(label=y.tests_label, target=target)]
    gates += [
        CommandGate(g.name, g.argv, g.timeout, g.env, when=g.when, baseline=g.baseline,
                    baseline_match=g.baseline_match, ignore_numbers=g.baseline_ignore_numbers, target=target,
                    junit=g.junit)
        for g in config.gates
    ]
    return gates
