"""The sandbox agents and gates run in, and the limits of a gate's process (issue 17, items 3, 9, 10)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from beads_runner import sandbox
from beads_runner.agent.process import run_supervised
from quality_gates.gates import KEEP_HEAD, KEEP_TAIL, CommandGate
from tests.helpers import processes_with


def needs_bwrap() -> None:
    if shutil.which("bwrap") is None:
        if os.environ.get("CI"):
            pytest.fail("bubblewrap (bwrap) is not installed; `make setup` installs it (apt-get install bubblewrap)")
        pytest.skip("bubblewrap (bwrap) is not installed")


@pytest.fixture
def confined(tmp_path):
    """The bubblewrap sandbox active for this test, with tmp_path/repo as the repository."""
    needs_bwrap()
    repo = tmp_path / "repo"
    (repo / "wt").mkdir(parents=True)
    sandbox.configure(sandbox.resolve("auto", repo))
    try:
        yield repo
    finally:
        sandbox.configure(sandbox.OFF)




def test_off_leaves_the_command_as_it_is():
    assert sandbox.OFF.wrap(["echo", "hi"], cwd="/x", writable=["/y"]) == ["echo", "hi"]
    assert sandbox.resolve("off") is sandbox.OFF


@pytest.mark.parametrize("mode", ["auto", "bwrap"])
def test_without_bubblewrap_auto_and_bwrap_are_refused_with_the_fix(monkeypatch, mode):
    monkeypatch.setattr(sandbox.executables, "on_path", lambda name, path=None: None)
    with pytest.raises(sandbox.SandboxUnavailable) as err:
        sandbox.resolve(mode)
    assert "bubblewrap" in err.value.message
    assert "apt-get install bubblewrap" in err.value.fix and 'sandbox = "off"' in err.value.fix


def test_a_confined_gate_writes_its_worktree_and_a_private_tmp_only(confined, tmp_path):
    wt = confined / "wt"
    script = ("echo in > inside; echo tmp > /tmp/scratch && echo tmp-ok; "
              f"echo x > {confined}/outside || echo refused-repo; echo x > {tmp_path}/elsewhere")
    report = CommandGate("probe", ["sh", "-c", script]).run(wt)
    assert report.status == "pass"
    assert (wt / "inside").exists()
    # The repository is read-only; the rest of /tmp is the gate's private one, gone when it ends.
    assert not (confined / "outside").exists() and not (tmp_path / "elsewhere").exists()
    assert "refused-repo" in report.output_tail
    assert "tmp-ok" in report.output_tail and not Path("/tmp/scratch").exists()


def test_a_confined_agent_writes_its_worktree_and_what_it_was_given(confined, tmp_path):
    data = tmp_path / "agent-data"
    outcome = run_supervised(
        ["sh", "-c", f"echo a > work && echo b > {data}/db && (echo c > {confined}/x || echo refused)"],
        cwd=confined / "wt", env=dict(os.environ), stdin_text="", timeout=60, stall_timeout=60, writable=[data])
    assert outcome.exit_code == 0
    assert (confined / "wt" / "work").exists() and (data / "db").exists() and not (confined / "x").exists()
    assert "refused" in outcome.output_tail


@pytest.mark.parametrize("confine", [False, True], ids=["unconfined", "confined"])
def test_a_gate_that_leaves_its_session_is_killed_and_its_output_kept(request, tmp_path, confine):
    if confine:
        request.getfixturevalue("confined")
    marker = "391.25" if confine else "391.5"
    script = f"echo before; setsid sleep {marker} & echo 'FAILED: test_x'; exit 1"
    report = CommandGate("leaky", ["sh", "-c", script]).run(tmp_path)
    assert report.status == "fail" and report.reason == "exited 1"
    assert "before" in report.output_tail and "FAILED: test_x" in report.output_tail
    assert processes_with(f"sleep {marker}", wait=5) == []


def test_huge_gate_output_keeps_its_head_and_tail_in_bounded_memory_and_log(tmp_path):
    code = "import sys\nsys.stdout.write('FIRST LINE\\n' + 'x' * 30_000_000 + '\\nLAST LINE\\n')\nsys.exit(1)"
    report = CommandGate("noisy", [sys.executable, "-c", code]).run(tmp_path, log_dir=tmp_path / "logs")
    assert report.status == "fail"
    log = (tmp_path / "logs" / "gate-noisy.log").read_text()
    assert log.startswith("FIRST LINE") and log.rstrip().endswith("LAST LINE")
    assert "bytes of output left out" in log
    assert len(log) <= KEEP_HEAD + KEEP_TAIL + 200
    assert report.output_tail.rstrip().endswith("LAST LINE")


def test_a_gate_command_that_does_not_exist_is_an_error_of_the_configuration_not_a_failure(tmp_path):
    report = CommandGate("lint", ["no-such-linter-here", "."]).run(tmp_path)
    assert report.status == "error"
    assert "no-such-linter-here" in report.reason and "no such command" in report.reason


def test_an_agent_line_without_end_is_read_in_bounded_pieces(monkeypatch, tmp_path):
    from beads_runner.agent import process

    monkeypatch.setattr(process, "MAX_LINE", 1000)
    pieces: list[str] = []
    outcome = run_supervised([sys.executable, "-c", "import sys; sys.stdout.write('y' * 5000)"], cwd=tmp_path,
                             env=dict(os.environ), stdin_text="", timeout=60, stall_timeout=60,
                             on_stdout=pieces.append)
    assert outcome.exit_code == 0
    assert "".join(pieces) == "y" * 5000 and max(map(len, pieces)) <= 1000


def test_a_writable_directory_around_the_repository_leaves_the_main_checkout_read_only(confined, tmp_path):
    outcome = run_supervised(
        ["sh", "-c", f"echo a > work && echo b > {tmp_path}/beside && (echo c > {confined}/x || echo refused)"],
        cwd=confined / "wt", env=dict(os.environ), stdin_text="", timeout=60, stall_timeout=60, writable=[tmp_path])
    assert outcome.exit_code == 0
    assert (confined / "wt" / "work").exists() and (tmp_path / "beside").exists()
    assert not (confined / "x").exists() and "refused" in outcome.output_tail


def test_an_unconfined_agent_that_leaves_its_session_leaves_nothing_running(tmp_path):
    outcome = run_supervised(["sh", "-c", "setsid sleep 391.75 & echo started"], cwd=tmp_path, env=dict(os.environ),
                             stdin_text="", timeout=60, stall_timeout=60)
    assert outcome.exit_code == 0 and "started" in outcome.output_tail
    assert processes_with("sleep 391.75", wait=5) == []
