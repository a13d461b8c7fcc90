"""`beads-runner demo --engine hatchet`: the demo on a real local engine (`hatchet up`, built by `make
tools`), two workers and `start --once`, all subprocesses of the demo, and all gone when it ends.

The demo directory sits in a mode-755 directory under /tmp: as root, PostgreSQL runs as the
`postgres` user, which cannot enter pytest's private (700) temporary directories."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from beads_runner.demo import ISSUES
from beads_runner.tracker.jsonl import JsonlTracker
from tests.e2e.conftest import BEADS_RUNNER
from tests.realtools import TOOLS_BIN, require_tool

pytestmark = pytest.mark.e2e

LANDING = ("demo-add", "demo-total", "demo-mul", "demo-docs")


@pytest.fixture
def demo_home(opencode_bin) -> Iterator[Path]:
    for name in ("hatchet-lite", "hatchet-migrate", "hatchet-admin"):
        require_tool(TOOLS_BIN / name, f"the Hatchet engine ({name})")
    home = Path(tempfile.mkdtemp(prefix="beads-runner-demo-", dir="/tmp"))
    os.chmod(home, 0o755)
    try:
        yield home
    finally:
        for pid in processes_mentioning(str(home)):  # only if the demo failed to stop them
            with _gone():
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


def demo_env() -> dict[str, str]:
    # No Hatchet client settings of the caller's: the demo must use the engine it starts.
    return {k: v for k, v in os.environ.items() if not k.startswith("HATCHET_CLIENT_")}


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line names `text`: the engine (hatchet-lite --config DIR/…),
    its PostgreSQL (-D DIR/…), the workers and the runner (--repo DIR)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until_gone(text: str, within: float = 60.0) -> list[int]:
    deadline = time.monotonic() + within
    while (left := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


class _gone:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError)


@pytest.mark.timeout(1200)
def test_demo_on_a_local_hatchet_engine_lands_four_and_hands_one_over(demo_home):
    repo = demo_home / "demo"
    result = subprocess.run([str(BEADS_RUNNER), "demo", "--engine", "hatchet", str(repo)], cwd=demo_home,
                            env=demo_env(), capture_output=True, text=True, timeout=1100, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "engine up: gRPC 127.0.0.1:" in result.stdout
    assert "Demo OK" in result.stdout

    # The report's final states, and the tracker's own.
    report = result.stdout[result.stdout.index("Issues:"):]
    tracker = JsonlTracker(repo)
    for issue_id, *_ in ISSUES:
        shown = tracker.show(issue_id)
        if issue_id in LANDING:
            assert shown.status == "closed" and shown.close_reason.startswith("Landed "), (issue_id, output[-6000:])
            assert f"  {issue_id:<11} closed   Landed " in report
        else:
            assert shown.status == "blocked" and "needs-human" in shown.labels
            assert f"  {issue_id:<11} blocked  " in report
    # Everything it started is stopped: no engine, PostgreSQL, worker or runner of this demo is left.
    assert wait_until_gone(str(demo_home)) == []
    status = subprocess.run([str(BEADS_RUNNER), "--repo", str(repo), "hatchet", "status"], env=demo_env(),
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and status.stdout.startswith("down")


@pytest.mark.timeout(900)
def test_ctrl_c_stops_the_engine_and_the_workers_too(demo_home):
    repo = demo_home / "demo"
    log = demo_home / "demo.out"
    with open(log, "wb") as out:
        demo = subprocess.Popen([str(BEADS_RUNNER), "demo", "--engine", "hatchet", str(repo)], cwd=demo_home,
                                env=demo_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while "Running `beads-runner start --once`" not in log.read_text(errors="replace"):
            assert demo.poll() is None, log.read_text(errors="replace")[-6000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-6000:]
            time.sleep(0.5)
        assert processes_mentioning(str(repo))  # the engine, its workers and the runner are running
        demo.send_signal(signal.SIGINT)  # what Ctrl-C at the terminal sends the demo
        demo.wait(300)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text = log.read_text(errors="replace")
    assert demo.returncode != 0, text[-6000:]
    assert "Stopping the runner, the workers and the engine" in text
    assert wait_until_gone(str(demo_home)) == [], text[-6000:]


def test_an_engine_that_cannot_start_ends_the_demo_with_its_error_and_fix(tmp_path):
    # No engine binaries where the environment points: `hatchet up` refuses, and the demo passes
    # its reason on and stops, leaving nothing running.
    empty = tmp_path / "no-binaries"
    empty.mkdir()
    env = {**demo_env(), "BEADS_RUNNER_HATCHET_BIN": str(empty)}
    result = subprocess.run([str(BEADS_RUNNER), "demo", "--engine", "hatchet", str(tmp_path / "demo")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stdout + result.stderr
    error = result.stderr
    assert error.startswith("error: `beads-runner hatchet up` exited 2: BEADS_RUNNER_HATCHET_BIN = "), error
    assert "lacks hatchet-lite, hatchet-migrate, hatchet-admin" in error
    assert "\n  fix: point it at the directory `make tools` fills" in error
    assert "Traceback" not in result.stdout + result.stderr
    assert wait_until_gone(str(tmp_path)) == []
