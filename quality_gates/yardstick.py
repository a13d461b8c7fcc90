"""The yardstick: the files that define or feed the gates. An agent's change to them never lands on its own.

The gates and the runner's config are read from the repository (the target), never from the agent's
worktree, but the commands the gates run read files in the worktree: a Makefile target, a script,
pytest's or ruff's configuration, a conftest.py. `diff.yardstick` finds a change to any of them and
says what changed. Only what configures the gates counts: a dependency added to pyproject.toml, or
an edit to a Makefile target no gate runs, is an ordinary change.
"""

from __future__ import annotations

import configparser
import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from quality_gates.change import Change, ChangeError, FileChange, git
from quality_gates.diff import DiffGate
from quality_gates.globs import matches, validate_globs
from quality_gates.report import GateReport, SuiteReport

RUNNER_CONFIG = ".beads-runner.toml"
YARDSTICK_GATE = "diff.yardstick"
TESTS_GATE = "diff.tests"  # quality_gates.test_integrity
COLLECTED_GATE = "diff.tests-collected"  # quality_gates.test_integrity.collected_check

# Whole files that configure a test runner, a linter, a type checker or CI: any change counts.
WHOLE_FILES = (
    RUNNER_CONFIG, "pytest.ini", "tox.ini", "noxfile.py", "conftest.py", ".coveragerc", ".flake8", "mypy.ini",
    ".mypy.ini", ".pylintrc", "pylintrc", "ruff.toml", ".ruff.toml", ".pre-commit-config.yaml", ".eslintrc",
    ".eslintrc.*", "eslint.config.*", "jest.config.*", "vitest.config.*", ".mocharc*", "karma.conf.*",
    "playwright.config.*", "pyrightconfig.json", ".golangci.*",
    # CI
    "/.github/workflows/**", "/.gitlab-ci.yml", "/.ci/**", "/.circleci/**", "/Jenkinsfile", "/.travis.yml",
    "/azure-pipelines.yml", "/.buildkite/**",
)
# pyproject.toml [tool.X] tables that configure tests or linters.
PYPROJECT_TOOLS = ("pytest", "ruff", "coverage", "mypy", "pylint", "black", "isort", "flake8", "pyright",
                   "tox", "nox", "pytype", "bandit", "pydocstyle", "codespell", "hatch")
# setup.cfg sections that configure tests or linters (prefixes).
SETUP_CFG_SECTIONS = ("tool:pytest", "pytest", "flake8", "mypy", "coverage:", "pycodestyle", "pydocstyle",
                      "isort", "pylint", "tox")
# package.json keys that configure tests or linters.
PACKAGE_JSON_KEYS = ("scripts", "jest", "mocha", "ava", "c8", "nyc", "eslintConfig", "vitest")
MAKEFILES = ("GNUmakefile", "makefile", "Makefile")


@dataclass(frozen=True)
class Finding:
    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


# --- reading both sides of a file ------------------------------------------------------------------

def base_text(change: Change, path: str) -> str | None:
    """The file at the change's base (the target side), None if it did not exist there."""
    try:
        return git(change.workdir, "show", f"{change.base}:{path}")
    except ChangeError:
        return None


def new_text(change: Change, path: str) -> str | None:
    try:
        return (Path(change.workdir) / path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


# --- section-wise comparisons ------------------------------------------------------------------------

def _describe(before: Any, after: Any) -> str:
    if before is None:
        return "added"
    if after is None:
        return "removed"
    return "changed"


def _pyproject_sections(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return {}
    try:
        tool = tomllib.loads(text).get("tool", {})
    except tomllib.TOMLDecodeError:
        return None
    return {name: tool[name] for name in PYPROJECT_TOOLS if isinstance(tool, dict) and name in tool}


def pyproject_changes(before: str | None, after: str | None) -> list[str]:
    """What changed in the [tool.*] tables that configure tests or linters (nothing else counts)."""
    a, b = _pyproject_sections(before), _pyproject_sections(after)
    if a is None or b is None:
        return ["not valid TOML on one side, so its test and linter configuration cannot be compared"]
    return [f"[tool.{k}] {_describe(a.get(k), b.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _cfg_sections(text: str | None) -> dict[str, dict[str, str]] | None:
    if text is None:
        return {}
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    return {name: dict(parser[name]) for name in parser.sections()
            if any(name == p or name.startswith(p if p.endswith(":") else p) for p in SETUP_CFG_SECTIONS)}


def setup_cfg_changes(before: str | None, after: str | None) -> list[str]:
    a, b = _cfg_sections(before), _cfg_sections(after)
    if a is None or b is None:
        return ["cannot be parsed on one side, so its test and linter sections cannot be compared"]
    return [f"[{k}] {_describe(a.get(k), b.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def package_json_changes(before: str | None, after: str | None) -> list[str]:
    def keys(text: str | None) -> dict[str, Any] | None:
        if text is None:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return {k: data[k] for k in PACKAGE_JSON_KEYS if isinstance(data, dict) and k in data}

    a, b = keys(before), keys(after)
    if a is None or b is None:
        return ["not valid JSON on one side, so its scripts cannot be compared"]
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) == b.get(k):
            continue
        if k == "scripts" and isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            names = sorted(n for n in set(a[k]) | set(b[k]) if a[k].get(n) != b[k].get(n))
            out += [f'script "{n}" {_describe(a[k].get(n), b[k].get(n))}' for n in names]
        else:
            out.append(f'"{k}" {_describe(a.get(k), b.get(k))}')
    return out


# --- Makefiles ---------------------------------------------------------------------------------------

_RULE = re.compile(r"^(?P<targets>[^\s:=#][^:=#]*?)\s*::?(?!=)\s*(?P<prereqs>[^=;#]*?)\s*(?:;\s*(?P<inline>.*))?$")
_ASSIGN = re.compile(
    r"^(?:export\s+|override\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)\s*(?:[:+?!]?=|::=)\s*(?P<value>.*)$")


@dataclass
class MakeRule:
    prereqs: list[str]
    recipe: list[str]


def parse_makefile(text: str) -> tuple[dict[str, MakeRule], dict[str, str], str | None]:
    """(rules by target, variables, the default goal). Enough of make for comparing what a target runs."""
    rules: dict[str, MakeRule] = {}
    variables: dict[str, str] = {}
    default: str | None = None
    current: list[MakeRule] = []
    lines = text.replace("\\\n", " ").splitlines()
    for line in lines:
        if line.startswith("\t"):
            for rule in current:
                rule.recipe.append(line.strip())
            continue
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped.strip():
            continue
        if (m := _ASSIGN.match(stripped.strip())) and ":" not in stripped.split("=", 1)[0].rstrip(":+?!"):
            variables[m.group("name")] = m.group("value").strip()
            current = []
            continue
        if m := _RULE.match(stripped):
            current = []
            for target in m.group("targets").split():
                rule = rules.setdefault(target, MakeRule([], []))
                rule.prereqs += m.group("prereqs").split()
                if m.group("inline"):
                    rule.recipe.append(m.group("inline").strip())
                current.append(rule)
                if default is None and not target.startswith("."):
                    default = target
            continue
        current = []
    return rules, variables, default


_VAR_REF = re.compile(r"\$[({]([A-Za-z_][A-Za-z0-9_.-]*)[)}]")


def _closure(rules: dict[str, MakeRule], goals: Sequence[str]) -> list[str]:
    seen: list[str] = []
    stack = list(goals)
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.append(t)
        if t in rules:
            stack += rules[t].prereqs
    return seen


def makefile_changes(before: str | None, after: str | None, goals: Sequence[str]) -> list[str]:
    """What changed in the rules `goals` run (with their prerequisites and the variables they use)."""
    if after is None:
        return ["removed (a gate runs make)"]
    if before is None:
        return ["added (a gate runs make)"]
    rules_a, vars_a, default_a = parse_makefile(before)
    rules_b, vars_b, default_b = parse_makefile(after)
    goals = list(goals) or [g for g in (default_a, default_b) if g]
    out: list[str] = []
    if not list(goals):
        return out
    targets = list(dict.fromkeys(_closure(rules_a, goals) + _closure(rules_b, goals)))
    used: set[str] = set()
    for t in targets:
        a, b = rules_a.get(t), rules_b.get(t)
        for rule in (a, b):
            if rule is not None:
                used |= set(_VAR_REF.findall(" ".join(rule.recipe + rule.prereqs)))
        if a is None or b is None:
            if a != b:
                out.append(f"target {t!r} {_describe(a, b)}")
            continue
        if a.recipe != b.recipe:
            out.append(f"target {t!r} recipe changed: {' / '.join(a.recipe) or '(empty)'!r} → "
                       f"{' / '.join(b.recipe) or '(empty)'!r}")
        if a.prereqs != b.prereqs:
            out.append(f"target {t!r} prerequisites changed: {a.prereqs} → {b.prereqs}")
    for name in sorted(used):
        if vars_a.get(name) != vars_b.get(name):
            out.append(f"variable {name} changed: {vars_a.get(name)!r} → {vars_b.get(name)!r}")
    return out


def make_invocation(argv: Sequence[str]) -> tuple[str | None, str, list[str]] | None:
    """For a `make …` gate: (makefile given with -f or None, directory from -C, goals); else None."""
    if not argv or PurePosixPath(argv[0]).name not in ("make", "gmake"):
        return None
    makefile, directory, goals = None, "", []
    args = list(argv[1:])
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-f", "--file", "--makefile") and i + 1 < len(args):
            makefile, i = args[i + 1], i + 2
            continue
        if a in ("-C", "--directory") and i + 1 < len(args):
            directory, i = args[i + 1], i + 2
            continue
        if a.startswith("-f") and len(a) > 2:
            makefile = a[2:]
        elif a.startswith("-C") and len(a) > 2:
            directory = a[2:]
        elif a.startswith("--file=") or a.startswith("--makefile="):
            makefile = a.split("=", 1)[1]
        elif a.startswith("--directory="):
            directory = a.split("=", 1)[1]
        elif not a.startswith("-") and "=" not in a:
            goals.append(a)
        i += 1
    return makefile, directory, goals


# --- the detector ------------------------------------------------------------------------------------

def _norm(path: str) -> str:
    return str(PurePosixPath(path)).removeprefix("./")


def gate_files(argvs: Sequence[Sequence[str]], workdir: Path | None = None) -> tuple[dict[str, list[str]], set[str]]:
    """(Makefile path → the goals gates run from it, script paths gates name)."""
    makefiles: dict[str, list[str]] = {}
    scripts: set[str] = set()
    for argv in argvs:
        inv = make_invocation(argv)
        if inv is not None:
            makefile, directory, goals = inv
            names = [makefile] if makefile else list(MAKEFILES)
            for name in names:
                path = _norm(str(PurePosixPath(directory) / name)) if directory else _norm(name)
                makefiles.setdefault(path, []).extend(goals)
            continue
        for arg in argv:
            # An argument that names a file relative to the worktree (a script, a test runner file).
            if arg.startswith("-") or "=" in arg or arg.startswith("/") or ".." in PurePosixPath(arg).parts:
                continue
            if "/" in arg or PurePosixPath(arg).suffix in (".sh", ".py", ".js", ".ts", ".mjs", ".cjs", ".bash", ".pl",
                                                           ".rb"):
                scripts.add(_norm(arg))
    return makefiles, scripts


def _file_findings(change: Change, f: FileChange, makefiles: dict[str, list[str]], scripts: set[str],
                   protected: Sequence[str]) -> list[str]:
    """What one changed file does to the yardstick (nothing: [])."""
    path, name = f.path, PurePosixPath(f.path).name
    what = {"A": "added", "D": "deleted"}.get(f.status, "changed")

    def both() -> tuple[str | None, str | None]:
        return base_text(change, path), (None if f.status == "D" else new_text(change, path))

    if path in makefiles:
        return makefile_changes(*both(), makefiles[path])
    if path in scripts:
        return [f"{what} (a gate runs it)"]
    if name == "pyproject.toml":
        return pyproject_changes(*both())
    if name == "setup.cfg":
        return setup_cfg_changes(*both())
    if name == "package.json":
        return package_json_changes(*both())
    if matches(path, WHOLE_FILES):
        return [f"{what} (it configures the runner, a test runner, a linter or CI)"]
    if protected and matches(path, protected):
        return [f"{what} (protected by [yardstick] protected)"]
    return []


def yardstick_findings(change: Change, argvs: Sequence[Sequence[str]], protected: Sequence[str] = ()) -> list[Finding]:
    """Every change to what defines or feeds the gates, with what changed."""
    protected = validate_globs(protected)
    makefiles, scripts = gate_files(argvs)
    return [Finding(f.path, what) for f in change.files
            for what in _file_findings(change, f, makefiles, scripts, protected)]


def yardstick_gate(argvs: Sequence[Sequence[str]], protected: Sequence[str] = (), *, label: str = "gates-change",
                   target: str | None = None) -> DiffGate:
    argvs = [list(a) for a in argvs]
    protected = validate_globs(protected)

    def check(change: Change) -> tuple[list[str], str]:
        found = [str(f) for f in yardstick_findings(change, argvs, protected)]
        if found:
            files = sorted({f.split(":", 1)[0] for f in found})
            return found, (f"the change touches what the gates measure with ({', '.join(files)}); a person must "
                           f"review it (the issue label {label!r} allows it)")
        return [], ""

    return DiffGate(YARDSTICK_GATE, check, target, what="changes to the gates' own definition")



def allow_by_labels(report: SuiteReport, labels: Sequence[str], *, gates_label: str = "gates-change",
                    tests_label: str = "tests-change") -> SuiteReport:
    """The report with the protection gates the issue's labels allow turned into passes (saying why)."""
    allowed = {YARDSTICK_GATE: gates_label, TESTS_GATE: tests_label, COLLECTED_GATE: tests_label}
    reports = []
    for r in report.reports:
        label = allowed.get(r.name)
        if label is not None and r.status == "fail" and label in labels:
            r = r.model_copy(update={"status": "pass", "reason": f"allowed by the issue label {label!r}: {r.reason}"})
        reports.append(r)
    return SuiteReport(reports=reports)


def moved_yardstick(report: SuiteReport) -> list[GateReport]:
    """The failing protection gates: a change that must go to a person, not back to the agent."""
    return [r for r in report.reports if r.name in (YARDSTICK_GATE, TESTS_GATE, COLLECTED_GATE) and not r.ok]


def handover_reason(report: SuiteReport) -> str:
    """One line for the run's error and the issue comment: which files, what changed."""
    parts = []
    for r in moved_yardstick(report):
        shown = "; ".join(r.findings[:8]) + (f"; … and {len(r.findings) - 8} more" if len(r.findings) > 8 else "")
        parts.append(f"{r.reason}: {shown}" if shown else r.reason)
    return "not landed, for a person to review: " + " | ".join(parts)
