"""Gates: checks the runner runs itself on the agent's work. The agent's word counts for nothing.

A gate gets a `GateInput` (the worktree, the target it is measured against, the changed files)
and returns a `GateReport`; it never raises for a failing check. `run_suite` runs them all.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from beads_runner import executables
from beads_runner.supervisor import supervise
from quality_gates.baseline import compare, path_roots
from quality_gates.change import Change, ChangeError, read_change, repo_toplevel, temporary_worktree
from quality_gates.globs import matches, validate_globs
from quality_gates.report import GateReport, SuiteReport
from quality_gates.testcounts import from_junit, parse_counts

TAIL_CHARS = 4000
KEEP_HEAD = 256 * 1024  # of a gate's output: the start (the first error is often the cause) ...
KEEP_TAIL = 768 * 1024  # ... and the end (the summary); what lies between is counted, not kept


class BoundedOutput:
    """A process's output in bounded memory: its first KEEP_HEAD and last KEEP_TAIL bytes, and how
    many bytes were left out between them. Read with os.read, so nothing already written is lost to
    a buffer if the pipe never closes."""

    def __init__(self, head: int = KEEP_HEAD, tail: int = KEEP_TAIL):
        self._head_max, self._tail_max = head, tail
        self._head = bytearray()
        self._tail = bytearray()
        self.omitted = 0
        self._lock = threading.Lock()

    def add(self, data: bytes) -> None:
        with self._lock:
            room = self._head_max - len(self._head)
            if room > 0:
                self._head += data[:room]
                data = data[room:]
            self._tail += data
            extra = len(self._tail) - self._tail_max
            if extra > 0:
                del self._tail[:extra]
                self.omitted += extra

    def drain(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.add(data)

    def text(self) -> str:
        with self._lock:
            middle = f"\n… {self.omitted} bytes of output left out …\n".encode() if self.omitted else b""
            return bytes(self._head + middle + self._tail).decode("utf-8", errors="replace")


def tail_text(text: str, limit: int = TAIL_CHARS) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]


class GateInput:
    """What every gate of one suite run looks at. The change is read from git once, when first needed.

    workdir: where the gates run (the issue's worktree, or the checkout for `beads-runner gates`).
    target: the branch the change is measured against (its merge-base with HEAD); None: unknown, so
        diff gates report an error, `when` runs every gate and baselines cannot be taken.
    changed_files: the changed paths, if the caller knows them; by default read from git.
    repo_root: the repository temporary baseline worktrees are made from (default: workdir).
    """

    def __init__(self, workdir: Path, *, target: str | None = None, changed_files: Sequence[str] | None = None,
                 repo_root: Path | None = None):
        self.workdir = Path(workdir)
        self.target = target
        self.repo_root = Path(repo_root) if repo_root is not None else self.workdir
        self._changed_files = list(changed_files) if changed_files is not None else None
        self._change: Change | ChangeError | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, value: GateInput | Path | str) -> GateInput:
        return value if isinstance(value, GateInput) else cls(Path(value))

    def change(self, target: str | None = None) -> Change:
        """The change against `target` (default: this input's). ChangeError if it cannot be read."""
        target = self.target or target
        if target is None:
            raise ChangeError("no target branch to measure the change against")
        with self._lock:
            if self._change is None:
                try:
                    self._change = read_change(self.workdir, target)
                except ChangeError as exc:
                    self._change = exc
            if isinstance(self._change, ChangeError):
                raise self._change
            return self._change

    def changed_files(self, target: str | None = None) -> list[str] | None:
        """The changed paths, or None when they cannot be known (no target, git failing)."""
        if self._changed_files is not None:
            return self._changed_files
        try:
            return self.change(target).paths
        except ChangeError:
            return None


@runtime_checkable
class Gate(Protocol):
    name: str

    def run(self, inp: GateInput, *, cancel: threading.Event | None = None,
            log_dir: Path | None = None) -> GateReport:
        """Check `inp.workdir`; never raise for a failing check, report it."""


@dataclass
class _Outcome:
    output: str
    exit_code: int | None
    duration_s: float
    timed_out: bool = False
    cancelled: bool = False
    start_error: str = ""


def resolve_command(name: str, cwd: Path, path: str | None = None) -> str | None:
    """Where `name` (a gate's argv[0]) would be executed from in `cwd`, or None: no such program."""
    return executables.find(name, cwd, path=path, expand_user=False)  # no shell runs it: `~` is a name


def missing_commands(gates: Sequence[Gate], where: Path) -> list[str]:
    """`name: argv[0]` of every command gate whose program cannot be found from `where` (the repository):
    a broken configuration, to report before any issue is claimed, not a failure to blame on an agent."""
    missing = []
    for gate in gates:
        if isinstance(gate, CommandGate):
            path = {**os.environ, **gate.env}.get("PATH")
            if resolve_command(gate.argv[0], where, path) is None:
                missing.append(f"{gate.name}: {gate.argv[0]}")
    return missing


def run_command(argv: Sequence[str], cwd: Path, *, timeout: float, env: dict[str, str] | None = None,
                cancel: threading.Event | None = None, log_path: Path | None = None) -> _Outcome:
    """Run `argv` (no shell) in its own process group; on timeout or cancel the whole group is killed.

    It runs in the active sandbox (`beads_runner.sandbox`), which lets it write only in `cwd`."""
    started = time.monotonic()
    environ = {**os.environ, **(env or {})}
    if resolve_command(argv[0], cwd, environ.get("PATH")) is None:
        return _Outcome("", None, 0.0, start_error=f"cannot run {argv[0]!r}: no such command "
                                                   f"(not on PATH, not a file in {cwd})")
    captured = BoundedOutput()
    try:
        ended = supervise(argv, what="gate", cwd=cwd, env=environ, timeout=timeout, cancel=cancel,
                          stdout=lambda pipe: captured.drain(pipe.fileno()))
    except OSError as exc:
        return _Outcome("", None, time.monotonic() - started,
                        start_error=f"cannot run {argv[0]!r}: {exc.strerror or exc}")
    output = captured.text()
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(output, encoding="utf-8")
    return _Outcome(output, ended.exit_code, time.monotonic() - started, ended.timed_out, ended.cancelled)


class CommandGate:
    """A command (argv, never a shell) run in the worktree; exit 0 passes.

    when: globs; the gate runs only if the change touches a matching file (else: skipped).
    baseline: on failure, run the command on the target's commit too (a temporary worktree) and
        fail only for failure lines the target does not have. `baseline_match` (a regex) picks the
        failure lines out of the output (default: every non-blank line); `ignore_numbers` makes
        line/column numbers (every standalone number) irrelevant to the comparison.
    target: the branch to use when the GateInput names none.
    """

    def __init__(self, name: str, argv: Sequence[str], timeout: float = 600.0, env: dict[str, str] | None = None,
                 *, when: Sequence[str] = (), baseline: bool = False, baseline_match: str | None = None,
                 ignore_numbers: bool = True, target: str | None = None, junit: str | None = None):
        if not argv:
            raise ValueError(f"gate {name!r} has an empty command")
        if timeout <= 0:
            raise ValueError(f"gate {name!r}: timeout must be positive")
        self.name = name
        self.argv = list(argv)
        self.timeout = timeout
        self.env = dict(env or {})
        self.when = validate_globs(when)
        self.baseline = baseline
        self.baseline_match = re.compile(baseline_match) if baseline_match else None
        self.ignore_numbers = ignore_numbers
        self.target = target
        self.junit = junit  # a JUnit XML file the command writes, relative to the worktree

    def __repr__(self) -> str:
        return f"CommandGate({self.name!r}, {self.argv!r})"

    def run(self, inp: GateInput | Path, *, cancel: threading.Event | None = None,
            log_dir: Path | None = None) -> GateReport:
        inp = GateInput.of(inp)
        if self.when:
            changed = inp.changed_files(self.target)
            if changed is not None and not any(matches(p, self.when) for p in changed):
                return GateReport(name=self.name, status="skipped",
                                  reason=f"the change touches no file matching {', '.join(self.when)}")
        log_path = (log_dir / f"gate-{self.name}.log") if log_dir else None
        junit = inp.workdir / self.junit if self.junit else None
        if junit is not None:
            junit.unlink(missing_ok=True)  # a file left by an earlier run (or the agent) proves nothing
        out = run_command(self.argv, inp.workdir, timeout=self.timeout, env=self.env, cancel=cancel,
                          log_path=log_path)
        tests = from_junit(junit) if junit is not None else parse_counts(out.output)
        report = GateReport(name=self.name, status="pass", duration_s=out.duration_s, exit_code=out.exit_code,
                            output_tail=tail_text(out.output), log_path=str(log_path) if log_path else None,
                            tests=tests)
        if out.start_error:
            return report.model_copy(update={"status": "error", "reason": out.start_error})
        if out.timed_out:
            return report.model_copy(update={"status": "fail", "reason": f"timed out after {self.timeout:g}s"})
        if out.cancelled:
            return report.model_copy(update={"status": "error", "reason": "cancelled"})
        if out.exit_code == 0:
            if tests is not None and tests.collected == 0:
                return report.model_copy(update={"status": "fail", "reason": "the test run ran no test"})
            return report
        failed = report.model_copy(update={"status": "fail", "reason": f"exited {out.exit_code}"})
        if not self.baseline:
            return failed
        return self._against_baseline(inp, out, failed, cancel, log_dir)

    def _against_baseline(self, inp: GateInput, out: _Outcome, failed: GateReport,
                          cancel: threading.Event | None, log_dir: Path | None) -> GateReport:
        started = time.monotonic()

        def result(**update) -> GateReport:
            update["duration_s"] = out.duration_s + time.monotonic() - started
            return failed.model_copy(update=update)

        try:
            change = inp.change(self.target)
            rel = inp.workdir.resolve().relative_to(repo_toplevel(inp.workdir).resolve())
            with temporary_worktree(inp.repo_root, change.base) as tree:
                log_path = (log_dir / f"gate-{self.name}.baseline.log") if log_dir else None
                base = run_command(self.argv, tree / rel, timeout=self.timeout, env=self.env, cancel=cancel,
                                   log_path=log_path)
                roots = path_roots(inp.workdir, tree, tree / rel)
        except (ChangeError, ValueError) as exc:
            return result(reason=f"exited {out.exit_code}; no baseline to compare with ({exc})")
        where = f"{change.target} at {change.base[:10]}"
        if base.cancelled:
            return result(status="error", reason="cancelled")
        if base.start_error or base.timed_out:
            why = base.start_error or f"timed out after {self.timeout:g}s"
            return result(reason=f"exited {out.exit_code}; the baseline run on {where} failed to run ({why})")
        if base.exit_code == 0:
            return result(reason=f"exited {out.exit_code}; passes on {where}, so every failure is new")
        cmp = compare(out.output, base.output, roots, match=self.baseline_match, ignore_numbers=self.ignore_numbers)
        if cmp.new:
            return result(reason=f"{len(cmp.new)} new failure line(s) not on {where}"
                                 f" ({len(cmp.preexisting)} pre-existing)",
                          findings=cmp.new, preexisting=cmp.preexisting)
        return result(status="pass", preexisting=cmp.preexisting,
                      reason=f"exited {out.exit_code} with only pre-existing failures"
                             f" ({len(cmp.preexisting)} line(s), also on {where})")


def run_suite(gates: Sequence[Gate], workdir: Path | GateInput, *, target: str | None = None,
              changed_files: Sequence[str] | None = None, repo_root: Path | None = None,
              cancel: threading.Event | None = None, log_dir: Path | None = None) -> SuiteReport:
    """Run every gate (all of them, so a report shows every failure at once) on one GateInput.

    `workdir` may be a GateInput; then `target`, `changed_files` and `repo_root` must not be given."""
    if isinstance(workdir, GateInput):
        if target is not None or changed_files is not None or repo_root is not None:
            raise TypeError("pass target/changed_files/repo_root in the GateInput, not beside it")
        inp = workdir
    else:
        inp = GateInput(Path(workdir), target=target, changed_files=changed_files, repo_root=repo_root)
    reports = []
    for gate in gates:
        if cancel is not None and cancel.is_set():
            reports.append(GateReport(name=gate.name, status="error", reason="cancelled before it ran"))
            continue
        try:
            reports.append(gate.run(inp, cancel=cancel, log_dir=log_dir))
        except Exception as exc:  # a gate must not raise; if one does, it fails the suite, not the step
            reports.append(GateReport(name=gate.name, status="error",
                                      reason=f"the gate itself failed: {type(exc).__name__}: {exc}"))
    return SuiteReport(reports=reports)
