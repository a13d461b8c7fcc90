"""Command gates: argv without a shell, env, timeout (the whole process group), `when`, the baseline."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from quality_gates import CommandGate, GateInput, GateReport, SuiteReport, run_suite
from tests.unit.test_gates_helpers import branch_worktree, commit_all, git, make_repo, write

PY = sys.executable


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


# --- plain command gates ------------------------------------------------------------------

def test_pass_and_fail_with_exit_code_and_output(tmp_path: Path) -> None:
    ok = CommandGate("ok", py("print('fine')"))
    bad = CommandGate("bad", py("import sys; print('broken here'); sys.exit(3)"))
    report = run_suite([ok, bad], tmp_path)
    assert [r.status for r in report.reports] == ["pass", "fail"]
    assert report.reports[1].exit_code == 3 and "broken here" in report.reports[1].output_tail
    assert report.reports[1].reason == "exited 3"
    assert not report.passed and report.trailer() == "ok=pass bad=fail"


def test_argv_is_not_run_by_a_shell_and_cwd_is_the_workdir(tmp_path: Path) -> None:
    (tmp_path / "marker.txt").write_text("x")
    gate = CommandGate("echo", [PY, "-c", "import os, sys; print(os.listdir('.'), sys.argv[1])", "$HOME; rm -rf /"])
    r = gate.run(GateInput(tmp_path))
    assert r.status == "pass"
    assert "marker.txt" in r.output_tail and "$HOME; rm -rf /" in r.output_tail


def test_env_additions_reach_the_command(tmp_path: Path) -> None:
    gate = CommandGate("env", py("import os, sys; sys.exit(0 if os.environ.get('GATE_FLAG') == 'on' else 1)"),
                       env={"GATE_FLAG": "on"})
    assert gate.run(tmp_path).status == "pass"
    assert CommandGate("env", gate.argv).run(tmp_path).status == "fail"


def test_missing_executable_is_an_error_not_a_crash(tmp_path: Path) -> None:
    r = CommandGate("nope", ["definitely-not-a-command-xyz"]).run(tmp_path)
    assert r.status == "error" and "cannot run" in r.reason


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie nobody reaped (no init in the container) is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    code = """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open("child.pid", "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(60)
    """
    gate = CommandGate("slow", py(code), timeout=1.5)
    started = time.monotonic()
    r = gate.run(tmp_path)
    assert time.monotonic() - started < 30  # killed at 1.5 s, not after its 60 s sleep
    assert r.status == "fail" and r.reason.startswith("timed out after 1.5s") and "started" in r.output_tail
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the gate's child outlived the timeout"


def test_cancel_stops_the_gate_and_skips_the_rest(tmp_path: Path) -> None:
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    report = run_suite([CommandGate("a", py("import time; time.sleep(30)")), CommandGate("b", py("pass"))],
                       tmp_path, cancel=cancel)
    assert [(r.status, r.reason) for r in report.reports] == [("error", "cancelled"),
                                                              ("error", "cancelled before it ran")]


def test_log_dir_gets_the_whole_output(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    report = run_suite([CommandGate("t", py("print('x' * 10000)"))], tmp_path, log_dir=logs)
    r = report.reports[0]
    assert r.log_path == str(logs / "gate-t.log") and len((logs / "gate-t.log").read_text()) > 10000
    assert len(r.output_tail) < 10000


def test_a_raising_gate_becomes_an_error_report(tmp_path: Path) -> None:
    class Broken:
        name = "broken"

        def run(self, inp, *, cancel=None, log_dir=None) -> GateReport:
            raise RuntimeError("boom")

    report = run_suite([Broken(), CommandGate("ok", py("pass"))], tmp_path)
    assert [r.status for r in report.reports] == ["error", "pass"] and "boom" in report.reports[0].reason


# --- when --------------------------------------------------------------------------------

def test_when_runs_only_if_the_change_touches_matching_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"src/app.py": "x = 1\n", "docs/guide.md": "# guide\n"})
    wt = branch_worktree(repo)
    write(wt, {"docs/guide.md": "# guide, edited\n"})
    py_gate = CommandGate("py", py("pass"), when=["*.py"], target="main")
    docs_gate = CommandGate("docs", py("pass"), when=["docs/**"], target="main")
    report = run_suite([py_gate, docs_gate], wt)
    assert [r.status for r in report.reports] == ["skipped", "pass"]
    assert "*.py" in report.reports[0].reason and report.passed
    write(wt, {"src/new_module.py": "y = 2\n"})  # untracked files count
    assert run_suite([py_gate], wt).reports[0].status == "pass"


def test_when_uses_explicit_changed_files(tmp_path: Path) -> None:
    gate = CommandGate("py", py("pass"), when=["src/**"])
    assert run_suite([gate], tmp_path, changed_files=["README.md"]).reports[0].status == "skipped"
    assert run_suite([gate], tmp_path, changed_files=["src/a/b.c"]).reports[0].status == "pass"
    # Unknown change (no target, no list): the gate runs rather than being skipped unchecked.
    assert run_suite([gate], tmp_path).reports[0].status == "pass"


def test_gate_input_and_keyword_arguments_do_not_mix(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        run_suite([], GateInput(tmp_path), target="main")


# --- baseline ----------------------------------------------------------------------------

LINTER = '''
import pathlib, sys
bad = 0
for path in sorted(pathlib.Path(".").rglob("*.py")):
    if path.name == "lint.py":
        continue
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if "TODO" in line:
            print(f"{path.resolve()}:{number}: TODO left in code")
            bad += 1
print(f"checked in 0.{bad}3s")
sys.exit(1 if bad else 0)
'''


@pytest.fixture
def lint_repo(tmp_path: Path) -> Path:
    """`main` already has a TODO in old.py: a pre-existing lint failure."""
    return make_repo(tmp_path / "r", {"lint.py": LINTER, "old.py": "a = 1\n# TODO: pre-existing\n",
                                      "new.py": "b = 2\n"})


def lint_gate(baseline: bool = True) -> CommandGate:
    return CommandGate("lint", [PY, "lint.py"], baseline=baseline, target="main")


def test_preexisting_failure_does_not_fail_the_change(lint_repo: Path) -> None:
    wt = branch_worktree(lint_repo)
    # The agent adds lines above the old TODO (its line number moves) and changes nothing else bad.
    write(wt, {"old.py": "import os\nimport sys\na = 1\n# TODO: pre-existing\n"})
    commit_all(wt, "agent work")
    r = run_suite([lint_gate()], wt).reports[0]
    assert r.status == "pass", r.reason
    assert r.exit_code == 1 and "only pre-existing" in r.reason
    # The summary line's timing is pre-existing too (the same on both runs here).
    assert r.preexisting == ["old.py:4: TODO left in code", "checked in 0.13s"] and r.findings == []
    # Without the baseline the same change fails.
    assert run_suite([lint_gate(baseline=False)], wt).reports[0].status == "fail"


def test_new_failure_fails_and_the_report_names_the_preexisting_ones(lint_repo: Path) -> None:
    wt = branch_worktree(lint_repo)
    write(wt, {"new.py": "b = 2\n# TODO: the agent's own\n"})  # uncommitted counts too
    report = run_suite([lint_gate()], wt)
    r = report.reports[0]
    assert r.status == "fail"
    assert r.findings == ["new.py:2: TODO left in code"]
    # "checked in 0.23s" on the change, "checked in 0.13s" on the target: timings do not tell them apart.
    assert r.preexisting == ["old.py:2: TODO left in code", "checked in 0.23s"]
    assert "1 new failure line(s) not on main" in r.reason and "(2 pre-existing)" in r.reason
    text = report.render_text()
    assert "new.py:2: TODO left in code" in text and "pre-existing" in text and "old.py:2" in text
    data = json.loads(report.render_json())
    assert data["passed"] is False and data["reports"][0]["preexisting"][0] == "old.py:2: TODO left in code"


def test_a_second_identical_message_is_new(lint_repo: Path) -> None:
    wt = branch_worktree(lint_repo)
    write(wt, {"old.py": "a = 1\n# TODO: pre-existing\n# TODO: pre-existing\n"})
    r = run_suite([lint_gate()], wt).reports[0]
    assert r.status == "fail" and r.findings == ["old.py:3: TODO left in code"]
    assert r.preexisting == ["old.py:2: TODO left in code", "checked in 0.23s"]


def test_failure_is_new_when_the_target_passes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"lint.py": LINTER, "a.py": "x = 1\n"})
    wt = branch_worktree(repo)
    write(wt, {"a.py": "x = 1  # TODO\n"})
    r = run_suite([lint_gate()], wt).reports[0]
    assert r.status == "fail" and "passes on main" in r.reason


def test_baseline_worktree_is_removed(lint_repo: Path) -> None:
    wt = branch_worktree(lint_repo)
    write(wt, {"old.py": "# TODO: pre-existing\n"})
    before = git(lint_repo, "worktree", "list", "--porcelain")
    run_suite([lint_gate()], wt)
    assert git(lint_repo, "worktree", "list", "--porcelain") == before
    assert not any(Path(p).exists() for p in
                   [line.split(" ", 1)[1] for line in before.splitlines() if "beads-runner-baseline" in line])


def test_baseline_without_a_target_keeps_the_failure(lint_repo: Path) -> None:
    wt = branch_worktree(lint_repo)
    write(wt, {"old.py": "# TODO: pre-existing\n"})
    r = CommandGate("lint", [PY, "lint.py"], baseline=True).run(GateInput(wt))
    assert r.status == "fail" and "no baseline" in r.reason


def test_baseline_match_selects_failure_lines(lint_repo: Path) -> None:
    wt = branch_worktree(lint_repo)
    write(wt, {"old.py": "a = 1\n# TODO: pre-existing\n", "extra.py": "print('noise')\n"})
    gate = CommandGate("lint", [PY, "lint.py"], baseline=True, baseline_match=r"TODO", target="main")
    r = gate.run(GateInput(wt))
    assert r.status == "pass" and r.preexisting == ["old.py:2: TODO left in code"]


def test_keeping_line_numbers_makes_a_moved_message_new(lint_repo: Path) -> None:
    wt = branch_worktree(lint_repo)
    write(wt, {"old.py": "import os\na = 1\n# TODO: pre-existing\n"})
    gate = CommandGate("lint", [PY, "lint.py"], baseline=True, baseline_match="TODO", ignore_numbers=False,
                       target="main")
    r = gate.run(GateInput(wt))
    assert r.status == "fail" and r.findings == ["old.py:3: TODO left in code"] and r.preexisting == []


# --- reports -----------------------------------------------------------------------------

def test_report_renderings_keep_their_format() -> None:
    suite = SuiteReport(reports=[GateReport(name="tests", status="pass", duration_s=1.0),
                                 GateReport(name="lint", status="fail", reason="exited 1", exit_code=1,
                                            output_tail="a.py:1: bad")])
    assert suite.trailer() == "tests=pass lint=fail"
    assert suite.summary() == "lint: exited 1"
    text = suite.render_text()
    assert "[PASS] tests 1.0s" in text and "[FAIL] lint 0.0s (exit 1): exited 1" in text and "a.py:1: bad" in text
    data = json.loads(suite.render_json())
    assert data["trailer"] == "tests=pass lint=fail" and data["reports"][1]["status"] == "fail"
    # Stored reports from before the new fields still load.
    old = SuiteReport.model_validate({"reports": [{"name": "t", "status": "pass"}]})
    assert old.reports[0].preexisting == [] and SuiteReport().trailer() == "none"
