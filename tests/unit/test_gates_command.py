"""`run_gates_command` (beads-runner gates), Services.gates, and the gates `init` proposes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from beads_runner.config import Config, validate_config
from beads_runner.init import propose_gates, render_config
from beads_runner.services import Services
from quality_gates import CommandGate, DiffGate
from quality_gates.command_line import run_gates_command
from tests.unit.test_gates_helpers import commit_all, make_repo, write

PY = sys.executable
CONFIG = f"""
[[gates]]
name = "lint"
run = ["{PY}", "lint.py"]
baseline = true

[[gates]]
name = "docs"
run = ["{PY}", "-c", "pass"]
when = ["docs/**"]

[diff]
forbidden = ["vendor/**"]
"""
LINTER = """
import sys, pathlib
bad = [f"{p}:{n}: TODO" for p in sorted(pathlib.Path('.').glob('*.py')) if p.name != 'lint.py'
       for n, line in enumerate(p.read_text().splitlines(), 1) if 'TODO' in line]
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "r", {".beads-runner.toml": CONFIG, "lint.py": LINTER, "a.py": "# TODO old\n"})


def test_gates_command_on_a_clean_tree(repo: Path) -> None:
    code, text = run_gates_command(repo, as_json=True)
    data = json.loads(text)
    assert code == 0, text
    assert data["trailer"] == "diff=pass lint=pass docs=skipped"
    lint = next(r for r in data["reports"] if r["name"] == "lint")
    assert lint["preexisting"] == ["a.py:1: TODO"]


def test_gates_command_fails_on_new_problems(repo: Path) -> None:
    write(repo, {"b.py": "# TODO new\n", "vendor/lib.py": "x = 1\n"})
    code, text = run_gates_command(repo, as_json=False)
    assert code == 1
    assert "[FAIL] lint" in text and "b.py:1: TODO" in text and "[FAIL] diff.paths" in text
    assert "vendor/lib.py (changed)" in text and text.splitlines()[-1].startswith("FAILED: ")


def test_gates_command_on_a_branch_measures_against_the_target(repo: Path) -> None:
    from tests.unit.test_gates_helpers import git

    git(repo, "checkout", "-q", "-b", "feature")
    write(repo, {"docs/x.md": "doc\n"})
    commit_all(repo, "docs")
    code, text = run_gates_command(repo, as_json=True)
    docs = next(r for r in json.loads(text)["reports"] if r["name"] == "docs")
    assert code == 0 and docs["status"] == "pass"  # docs/** touched


def test_gates_command_reports_config_errors(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {".beads-runner.toml": "[diff]\nmax_lines = -3\n"})
    code, text = run_gates_command(repo, as_json=False)
    assert code == 2 and "diff.max_lines" in text and ".beads-runner.toml" in text


def test_services_build_diff_gates_then_commands(tmp_path: Path) -> None:
    config = validate_config({"gates": [{"name": "t", "run": "pytest", "baseline": True, "when": ["*.py"]}],
                              "diff": {"max_lines": 10}}, "x")
    gates = Services(tmp_path, config).gates
    assert [g.name for g in gates] == ["diff.nonempty", "diff.paths", "diff.protected", "diff.content", "diff.size",
                                       "diff.secrets", "diff.yardstick", "diff.tests", "t"]
    assert all(isinstance(g, DiffGate) and g.target == "main" for g in gates[:8])
    cmd = gates[8]
    assert isinstance(cmd, CommandGate) and cmd.baseline and cmd.when == ["*.py"] and cmd.target == "main"
    assert config.gates_budget == 600 * 2 + 60
    # Without the diff checks, the runner's and the agent's configuration are still protected, and the
    # yardstick checks (not diff hygiene) stay unless [yardstick] enabled = false.
    no_diff = Services(tmp_path, validate_config({"diff": {"enabled": False}}, "x")).gates
    assert [g.name for g in no_diff] == ["diff.protected", "diff.yardstick", "diff.tests"]
    assert [g.name for g in Services(tmp_path, validate_config(
        {"diff": {"enabled": False}, "yardstick": {"enabled": False}}, "x")).gates] == ["diff.protected"]


# --- init --------------------------------------------------------------------------------

def proposals(repo: Path) -> list[tuple[str, str, bool]]:
    return [tuple(p) for p in propose_gates(repo)]


def test_init_proposes_python_gates(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": "[project]\nname='x'\n[tool.ruff]\nline-length=100\n[tool.mypy]\n",
                     "tests/test_x.py": "def test(): pass\n"})
    names = [(n, r.split(" -m ")[-1] if " -m " in r else r, e) for n, r, e in proposals(tmp_path)]
    assert names == [("tests", "pytest -q", True), ("lint", "ruff check .", True), ("types", "mypy .", True)]
    assert [p.baseline for p in propose_gates(tmp_path)] == [False, True, True]


def test_init_does_not_propose_pytest_for_a_js_tests_dir(tmp_path: Path) -> None:
    write(tmp_path, {"tests/app.test.js": "test('x', () => {})\n",
                     "package.json": json.dumps({"scripts": {"test": "jest"}})})
    assert proposals(tmp_path) == [("npm-test", "npm test --silent", True)]


def test_init_ignores_npm_placeholder_and_uses_the_lockfile_runner(tmp_path: Path) -> None:
    write(tmp_path, {"package.json": json.dumps({"scripts": {"test": 'echo "Error: no test specified" && exit 1'}})})
    assert proposals(tmp_path) == []
    write(tmp_path, {"package.json": json.dumps({"scripts": {"test": "vitest run"}}), "pnpm-lock.yaml": ""})
    assert proposals(tmp_path) == [("npm-test", "pnpm test", True)]
    write(tmp_path, {"package.json": "{not json"})
    assert proposals(tmp_path) == []


def test_init_proposes_go_cargo_and_make(tmp_path: Path) -> None:
    write(tmp_path, {"go.mod": "module x\n", "Cargo.toml": "[package]\n", "Makefile": "all:\n\ntest: all\n\tgo test\n"})
    assert proposals(tmp_path) == [("go-test", "go test ./...", True), ("cargo-test", "cargo test", True),
                                   ("make-test", "make test", False)]


@pytest.mark.parametrize("makefile, expected", [
    ("test:\n\t./run-tests\n", [("make-test", "make test", True)]),
    ("build:\n\tcc x.c\ntest : build\n\t./t\n", [("make-test", "make test", True)]),
    ("test := value\nall:\n", []),
    ("unittest:\n\t./t\n", []),
])
def test_init_make_test_target(tmp_path: Path, makefile: str, expected: list) -> None:
    write(tmp_path, {"Makefile": makefile})
    assert proposals(tmp_path) == expected


def test_init_config_is_valid_and_round_trips(tmp_path: Path) -> None:
    import tomllib

    write(tmp_path, {"pyproject.toml": "[tool.pytest.ini_options]\n[tool.ruff]\n", "Makefile": "test:\n\tx\n"})
    config = validate_config(tomllib.loads(render_config(tmp_path)), "rendered")
    assert [(g.name, g.baseline) for g in config.gates] == [("tests", False), ("lint", True)]
    assert config.diff == Config().diff
    empty = validate_config(tomllib.loads(render_config(tmp_path / "nothing")), "rendered")
    assert empty.gates == []
