"""The yardstick detectors on real git worktrees: what a change does to the files that define or feed
the gates, and to the tests that exist on the target."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from quality_gates import GateInput, run_suite
from quality_gates.change import read_change
from quality_gates.report import GateReport, SuiteReport
from quality_gates.test_integrity import js_findings, python_findings
from quality_gates.test_integrity import test_findings as weakened_tests
from quality_gates.test_integrity import tests_gate as make_tests_gate
from quality_gates.testcounts import from_junit, parse_counts
from quality_gates.yardstick import (
    allow_by_labels, make_invocation, makefile_changes, moved_yardstick, pyproject_changes, yardstick_findings,
    yardstick_gate,
)
from tests.unit.test_gates_helpers import branch_worktree, make_repo, write

MAKEFILE = ("build:\n\tpython -m build\n\ncheck: lint\n\tpython -m unittest -q\n\n"
            "lint:\n\t$(RUFF) check .\n\nRUFF = ruff\n")
PYPROJECT = textwrap.dedent("""\
    [project]
    name = "x"
    dependencies = []

    [tool.pytest.ini_options]
    addopts = "-q"
    """)
TEST_FILE = textwrap.dedent("""\
    import unittest


    class T(unittest.TestCase):
        def test_add(self):
            self.assertEqual(1 + 1, 2)
            self.assertTrue(True)

        def test_other(self):
            assert 1
    """)


def found(wt: Path, argvs=(), protected=()) -> list[str]:
    return [str(f) for f in yardstick_findings(read_change(wt, "main"), argvs, protected)]


def worktree(tmp_path: Path, files: dict[str, str]) -> Path:
    return branch_worktree(make_repo(tmp_path / "repo", files))


# --- the yardstick ----------------------------------------------------------------------------------

def test_rewriting_the_makefile_target_a_gate_runs_is_found_with_what_changed(tmp_path):
    wt = worktree(tmp_path, {"Makefile": MAKEFILE})
    write(wt, {"Makefile": MAKEFILE.replace("\tpython -m unittest -q", "\t@true")})
    out = found(wt, [["make", "check"]])
    assert out == ["Makefile: target 'check' recipe changed: 'python -m unittest -q' → '@true'"]


def test_a_makefile_target_no_gate_runs_may_change(tmp_path):
    wt = worktree(tmp_path, {"Makefile": MAKEFILE})
    write(wt, {"Makefile": MAKEFILE.replace("python -m build", "python -m build --wheel")})
    assert found(wt, [["make", "check"]]) == []


def test_a_prerequisite_and_a_variable_the_target_uses_count(tmp_path):
    wt = worktree(tmp_path, {"Makefile": MAKEFILE})
    write(wt, {"Makefile": MAKEFILE.replace("RUFF = ruff", "RUFF = true")})
    assert found(wt, [["make", "check"]]) == ["Makefile: variable RUFF changed: 'ruff' → 'true'"]


def test_make_invocation_reads_file_directory_and_goals():
    assert make_invocation(["make", "-C", "sub", "-f", "ci.mk", "-j4", "V=1", "test", "lint"]) == \
        ("ci.mk", "sub", ["test", "lint"])
    assert make_invocation(["pytest"]) is None


def test_makefile_default_goal_is_the_first_target():
    before = "all:\n\tpytest\nother:\n\techo\n"
    assert makefile_changes(before, before.replace("pytest", "true"), []) == \
        ["target 'all' recipe changed: 'pytest' → 'true'"]


def test_pyproject_only_the_test_and_linter_tables_count():
    added_dep = PYPROJECT.replace("dependencies = []", 'dependencies = ["requests>=2"]')
    assert pyproject_changes(PYPROJECT, added_dep) == []
    weaker = PYPROJECT.replace('addopts = "-q"', 'addopts = "-q -k not slow"')
    assert pyproject_changes(PYPROJECT, weaker) == ["[tool.pytest] changed"]
    assert pyproject_changes(PYPROJECT, PYPROJECT + "\n[tool.ruff]\nline-length = 300\n") == ["[tool.ruff] added"]


def test_runner_config_conftest_ci_scripts_and_user_globs_are_found(tmp_path):
    wt = worktree(tmp_path, {".beads-runner.toml": "", "tests/conftest.py": "", "scripts/check.sh": "pytest\n",
                             ".github/workflows/ci.yml": "on: push\n", "etc/gates.txt": "x\n"})
    write(wt, {".beads-runner.toml": "[diff]\nenabled = false\n", "tests/conftest.py": "collect_ignore = ['x']\n",
               "scripts/check.sh": "true\n", ".github/workflows/ci.yml": "on: never\n", "etc/gates.txt": "y\n"})
    out = found(wt, [["./scripts/check.sh"]], ["etc/*.txt"])
    paths = [o.split(":")[0] for o in out]
    assert paths == [".beads-runner.toml", ".github/workflows/ci.yml", "etc/gates.txt", "scripts/check.sh",
                     "tests/conftest.py"]
    assert "a gate runs it" in out[3]


def test_package_json_scripts_count_and_dependencies_do_not(tmp_path):
    pkg = {"name": "x", "scripts": {"test": "jest"}, "dependencies": {}}
    wt = worktree(tmp_path, {"package.json": json.dumps(pkg)})
    write(wt, {"package.json": json.dumps({**pkg, "dependencies": {"left-pad": "1"}})})
    assert found(wt) == []
    write(wt, {"package.json": json.dumps({**pkg, "scripts": {"test": "true"}})})
    assert found(wt) == ['package.json: script "test" changed']


def test_setup_cfg_pytest_section_counts_metadata_does_not(tmp_path):
    cfg = "[metadata]\nname = x\n\n[tool:pytest]\naddopts = -q\n"
    wt = worktree(tmp_path, {"setup.cfg": cfg})
    write(wt, {"setup.cfg": cfg.replace("name = x", "name = y")})
    assert found(wt) == []
    write(wt, {"setup.cfg": cfg.replace("-q", "-q --deselect tests")})
    assert found(wt) == ["setup.cfg: [tool:pytest] changed"]


def test_the_yardstick_gate_fails_naming_the_files_and_the_label_allows_it(tmp_path):
    wt = worktree(tmp_path, {"Makefile": MAKEFILE})
    write(wt, {"Makefile": MAKEFILE.replace("\tpython -m unittest -q", "\t@true")})
    report = run_suite([yardstick_gate([["make", "check"]])], GateInput(wt, target="main"))
    r = report.reports[0]
    assert r.status == "fail" and "Makefile" in r.reason and "gates-change" in r.reason
    assert moved_yardstick(report) == [r]
    allowed = allow_by_labels(report, ["gates-change"])
    assert allowed.passed and "allowed by the issue label" in allowed.reports[0].reason
    assert not allow_by_labels(report, ["tests-change"]).passed


# --- test integrity ---------------------------------------------------------------------------------

def _py(before: str, after: str | None) -> list[str]:
    return [f.what for f in python_findings("tests/test_x.py", before, after)]


def test_unittest_and_pytest_skips_and_xfails_on_existing_tests_are_found():
    assert _py(TEST_FILE, TEST_FILE.replace("    def test_add", "    @unittest.skip('later')\n    def test_add")) == \
        ["test T.test_add skipped or marked expected-to-fail"]
    xfail = TEST_FILE.replace("    def test_other", "    @unittest.expectedFailure\n    def test_other")
    assert _py(TEST_FILE, xfail) == ["test T.test_other skipped or marked expected-to-fail"]
    assert _py(TEST_FILE, TEST_FILE.replace("        assert 1", "        self.skipTest('no')\n        assert 1")) == \
        ["test T.test_other skipped or marked expected-to-fail"]
    pytest_style = "import pytest\n\ndef test_a():\n    assert f() == 1\n"
    assert _py(pytest_style, pytest_style.replace("def test_a", "@pytest.mark.xfail\ndef test_a")) == \
        ["test test_a skipped or marked expected-to-fail"]
    module_skip = pytest_style.replace("import pytest\n", "import pytest\npytestmark = pytest.mark.skip\n")
    assert _py(pytest_style, module_skip) == ["test test_a skipped or marked expected-to-fail"]
    assert _py(TEST_FILE, TEST_FILE.replace("class T", "@unittest.skip('x')\nclass T")) == [
        "test T.test_add skipped or marked expected-to-fail", "test T.test_other skipped or marked expected-to-fail"]


def test_removed_assertions_and_deleted_tests_are_found_and_new_tests_are_free():
    assert _py(TEST_FILE, TEST_FILE.replace("        self.assertTrue(True)\n", "")) == \
        ["assertions removed from test T.test_add (2 → 1)"]
    without = TEST_FILE.replace("    def test_other(self):\n        assert 1\n", "")
    assert _py(TEST_FILE, without) == ["test T.test_other deleted"]
    assert _py(TEST_FILE, None) == ["test file deleted (2 test(s))"]
    more = TEST_FILE + ("\n    @unittest.skip('a new test skipped is the change's own business')\n"
                        "    def test_new(self):\n        pass\n")
    assert _py(TEST_FILE, more) == []


def test_js_skips_focus_and_fewer_tests_are_found():
    before = "describe('x', () => {\n  it('a', () => { expect(1).toBe(1) })\n  test('b', () => {})\n})\n"
    what = [f.what for f in js_findings("a.test.js", before, before.replace("it('a'", "it.skip('a'"))]
    assert what == ["tests skipped, focused or marked todo/failing: it.skip ×1"]
    what = [f.what for f in js_findings("a.test.js", before, before.replace("  test('b', () => {})\n", ""))]
    assert what == ["fewer tests (2 → 1)"]
    assert [f.what for f in js_findings("a.test.js", before, before.replace("test(", "test.only("))] == \
        ["tests skipped, focused or marked todo/failing: test.only ×1"]
    assert js_findings("a.test.js", before, before.replace("it(", "xit(")) != []


def test_the_tests_gate_reads_the_change_from_git(tmp_path):
    wt = worktree(tmp_path, {"tests/test_x.py": TEST_FILE, "src/a.py": "A = 1\n"})
    write(wt, {"src/a.py": "A = 2\n", "tests/test_new.py": "def test_new():\n    pass\n"})
    assert weakened_tests(read_change(wt, "main")) == []
    (wt / "tests" / "test_x.py").unlink()
    report = make_tests_gate().run(GateInput(wt, target="main"))
    assert report.status == "fail" and report.findings == ["tests/test_x.py: test file deleted (2 test(s))"]
    assert "tests-change" in report.reason


# --- test counts ------------------------------------------------------------------------------------

def test_pytest_unittest_and_junit_counts(tmp_path):
    py = parse_counts("...\n==== 3 passed, 1 failed, 2 skipped, 1 xfailed, 1 warning in 0.52s ====\n")
    assert (py.collected, py.passed, py.failed, py.skipped, py.duration_s) == (7, 3, 1, 3, 0.52)
    assert parse_counts("\n4 passed in 0.10s\n").passed == 4
    assert parse_counts("==== no tests ran in 0.01s ====\n").collected == 0
    ut = parse_counts("..s\n----------------------------------------------------------------------\n"
                      "Ran 3 tests in 0.004s\n\nOK (skipped=1)\n")
    assert (ut.collected, ut.passed, ut.failed, ut.skipped) == (3, 2, 0, 1)
    failed = parse_counts("Ran 5 tests in 1.000s\n\nFAILED (failures=1, errors=1)\n")
    assert (failed.passed, failed.failed) == (3, 2)
    assert parse_counts("all good\n") is None
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1" time="2.5"/></testsuites>')
    j = from_junit(xml)
    assert (j.collected, j.passed, j.failed, j.skipped, j.duration_s) == (4, 2, 1, 1, 2.5)


def test_a_test_gate_that_ran_no_test_fails_and_counts_reach_the_trailer(tmp_path):
    import sys

    from quality_gates import CommandGate

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "tests").mkdir()
    gate = CommandGate("tests", [sys.executable, "-m", "unittest", "discover", "-s", "tests"])
    r = gate.run(GateInput(empty))
    assert r.status == "fail" and ("ran no test" in r.reason or r.exit_code != 0)
    (empty / "tests" / "test_a.py").write_text(TEST_FILE)
    r = gate.run(GateInput(empty))
    assert r.status == "pass" and r.tests is not None and r.tests.collected == 2 and r.tests.passed == 2
    suite = SuiteReport(reports=[r, GateReport(name="lint", status="pass")])
    assert suite.tests_trailer().startswith("tests collected=2 passed=2 failed=0 skipped=0 duration=")


def test_fewer_tests_collected_than_on_the_target_fails_and_the_target_count_is_cached(tmp_path):
    import sys

    from quality_gates import CommandGate
    from quality_gates.test_integrity import collected_check

    wt = worktree(tmp_path, {"tests/__init__.py": "", "tests/test_a.py": TEST_FILE,
                             "tests/test_b.py": TEST_FILE.replace("class T", "class U")})
    gate = CommandGate("tests", [sys.executable, "-m", "unittest", "discover", "-s", "tests", "-t", "."])
    # Not a TestCase any more: the same functions, the same assertions, but unittest no longer runs them.
    write(wt, {"tests/test_b.py": TEST_FILE.replace("class T(unittest.TestCase)", "class U")})
    inp = GateInput(wt, target="main")
    report = run_suite([gate], inp)
    assert report.passed and report.reports[0].tests.collected == 2
    cache = tmp_path / "counts"
    extra = collected_check(report, [gate], inp, cache=cache)
    assert extra.status == "fail" and extra.findings == [
        f"tests: 2 test(s) collected, 4 on main at {read_change(wt, 'main').base[:10]}"]
    assert len(list(cache.iterdir())) == 1  # the target's count, kept for the next run on this commit
    assert collected_check(report, [gate], inp, cache=cache).status == "fail"
    assert allow_by_labels(SuiteReport(reports=[extra]), ["tests-change"]).passed


def test_fewer_tests_is_not_asked_when_no_existing_test_file_changed(tmp_path):
    import sys

    from quality_gates import CommandGate
    from quality_gates.test_integrity import collected_check

    wt = worktree(tmp_path, {"tests/__init__.py": "", "tests/test_a.py": TEST_FILE})
    write(wt, {"src.py": "X = 1\n"})
    gate = CommandGate("tests", [sys.executable, "-m", "unittest", "discover", "-s", "tests", "-t", "."])
    inp = GateInput(wt, target="main")
    assert collected_check(run_suite([gate], inp), [gate], inp) is None
