"""Faults on a real Hatchet engine: a second submit while a run works, a worker killed with -9 in
mid-session, a run cancelled through the API, a worker with other policies, a step that fails until
its fix loop is spent. The agent is the `command` kind (tests/e2e/test_reliability.py's script), so
each case takes seconds of agent time; the engine, the workers and `start` are real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.e2e.conftest import BEADS_RUNNER, git, issue
from tests.e2e.hatchet_real import Workers, use_hatchet
from tests.e2e.test_reliability import Rig, agent_processes
from tests.fakes.bd_standin import bd_json, logged_calls, write_faults

pytestmark = pytest.mark.e2e


class HatchetRig(Rig):
    def __init__(self, tmp, engine):
        super().__init__(tmp)
        self.engine = engine
        self.configure()
        use_hatchet(self.repo)
        self.workers = Workers(self.repo, self.env())

    def env(self, **extra: str) -> dict[str, str]:
        return self.engine.env(super().env(**extra))

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BEADS_RUNNER), "--repo", str(self.repo), *args], env=self.env(),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def wait_for(self, what, timeout: float = 120.0, every: float = 0.3):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"timed out waiting for {what}")

    def started(self, issue_id: str) -> list[dict]:
        return [s for s in self.sessions() if s["issue"] == issue_id and s["event"] == "start"]

    def logs(self) -> str:
        return "\n".join(self.workers.log(n)[-4000:] for n in self.workers.procs)


@pytest.fixture
def hrig(tmp_path, hatchet_engine):  # noqa: F811
    rig = HatchetRig(tmp_path, hatchet_engine)
    try:
        yield rig
    finally:
        rig.workers.stop()


def test_a_second_submit_while_a_run_works_starts_no_second_session(hrig):
    issue_id = hrig.issue("Slow work", "sleep:6")
    hrig.workers.start("w1")
    start = hrig.start()
    hrig.wait_for(lambda: hrig.started(issue_id))
    again = hrig.cli("submit", issue_id)
    out, _ = start.communicate(timeout=240)
    assert start.returncode == 0, out[-3000:] + hrig.logs()
    assert again.returncode in (0, 1), again.stderr
    assert len(hrig.started(issue_id)) == 1  # one agent, whatever was submitted meanwhile
    assert len(hrig.commits_for(issue_id)) == 1
    assert issue(hrig.repo, issue_id)["status"] == "closed"


def test_a_worker_killed_mid_session_lands_once_and_its_agent_is_reaped(hrig):
    # Unconfined: under bubblewrap the agent dies with its worker (--die-with-parent), and this test
    # would not see the reaper at work.
    hrig.configure(sandbox="off")
    use_hatchet(hrig.repo)
    # Silent after its first line: an agent that kept printing would die of the broken pipe anyway.
    issue_id = hrig.issue("Long work", "stall_once")
    w1 = hrig.workers.start("w1")
    start = hrig.start()
    hrig.wait_for(lambda: hrig.started(issue_id))
    assert agent_processes(str(hrig.tmp / "agent.py"))
    os.kill(w1.pid, signal.SIGKILL)  # the worker only: its agent, in a session of its own, lives on
    w1.wait()
    time.sleep(1)
    assert agent_processes(str(hrig.tmp / "agent.py"))  # orphaned, not dead with its worker
    hrig.workers.start("w1-restarted")  # reaps the orphan at start, then takes work again
    # The orphan is reaped at once; the engine hands the task to a worker only after its ~30 s heartbeat
    # timeout, so for a while no agent at all runs.
    hrig.wait_for(lambda: not agent_processes(str(hrig.tmp / "agent.py")), timeout=25)
    out, _ = start.communicate(timeout=400)
    assert start.returncode == 0, out[-3000:] + hrig.logs()
    assert len(hrig.commits_for(issue_id)) == 1
    assert issue(hrig.repo, issue_id)["status"] == "closed"
    # never two agents in one worktree at once
    starts = sorted(s["t"] for s in hrig.started(issue_id))
    ends = sorted(s["t"] for s in hrig.sessions() if s["issue"] == issue_id and s["event"] == "end")
    assert len(starts) == 2 and len(ends) == 1  # the killed worker's agent never finished
    assert not agent_processes(str(hrig.tmp / "agent.py"))


def test_a_run_cancelled_through_the_api_goes_to_a_person(hrig):
    from beads_runner.config import load_config
    from beads_runner.services import Services
    from workflows.hatchet import make_client

    issue_id = hrig.issue("Work to cancel", "sleep:30")
    hrig.workers.start("w1")
    start = hrig.start()
    hrig.wait_for(lambda: hrig.started(issue_id))
    saved = dict(os.environ)
    os.environ.update(hrig.engine.client)
    try:
        svc = Services(hrig.repo, load_config(hrig.repo))
        client = make_client(svc)
        from workflows.hatchet import HatchetEngine

        run_id = hrig.wait_for(lambda: HatchetEngine(client, None, svc).active_run(issue_id))
        client.runs.cancel(run_id)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out, _ = start.communicate(timeout=240)
    shown = hrig.wait_for(lambda: (i := issue(hrig.repo, issue_id))["status"] == "blocked" and i, timeout=60)
    assert "needs-human" in shown.get("labels", []), out[-3000:]
    assert any("cancelled" in c for c in hrig.comments(issue_id))
    assert not hrig.commits_for(issue_id)
    assert git(hrig.repo, "rev-parse", "--verify", "-q", f"refs/heads/beads-runner/{issue_id}").strip()


def test_a_worker_with_other_policies_refuses_to_start(hrig):
    registered = hrig.run(timeout=120)  # nothing is ready: start registers the definition and ends
    assert registered.returncode == 0, registered.stdout + registered.stderr
    config = hrig.repo / ".beads-runner.toml"
    config.write_text(config.read_text().replace("max_sessions = 3", "max_sessions = 5"))
    git(hrig.repo, "commit", "-q", "-am", "other policies")
    proc = hrig.workers.start("other")
    assert proc.wait(60) == 2
    assert "differs from the one registered" in hrig.workers.log("other")


def test_a_gate_that_keeps_failing_hands_the_issue_over(hrig):
    hrig.configure(gate=f"{os.environ.get('PYTHON', 'python3')} -c 'import sys; sys.exit(1)'")
    use_hatchet(hrig.repo)
    issue_id = hrig.issue("Breaks the gate", "write")
    hrig.workers.start("w1")
    result = hrig.run(timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + hrig.logs()
    shown = issue(hrig.repo, issue_id)
    assert shown["status"] == "blocked" and "needs-human" in shown.get("labels", [])
    assert any("gates" in c for c in hrig.comments(issue_id))
    assert not hrig.commits_for(issue_id)
    events = [json.loads(line) for line in (hrig.repo / ".beads-runner" / "logs" / "runner.jsonl").read_text()
              .splitlines() if line.startswith("{")]
    assert any(e.get("event") == "run failed, handing over" and e.get("issue_id") == issue_id for e in events)
    assert bd_json(hrig.repo, "show", issue_id)


def test_a_crashed_session_is_retried_after_the_engines_backoff_and_lands(hrig):
    issue_id = hrig.issue("Crashes once", "crash_once")
    hrig.workers.start("w1")
    result = hrig.run(timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + hrig.logs()
    assert len(hrig.commits_for(issue_id)) == 1
    assert issue(hrig.repo, issue_id)["status"] == "closed"
    starts = sorted(s["t"] for s in hrig.started(issue_id))
    assert len(starts) == 2  # the crash, then the retry that lands
    # Hatchet waits min(backoff_max, backoff_factor ** retry) = 2 s before the second try (engine.retry
    # defaults): the retry came no sooner (a lower bound, which load cannot make fail).
    assert starts[1] - starts[0] >= 2.0


def test_a_step_past_its_timeout_is_cancelled_by_the_engine_and_retried(hrig):
    config = hrig.repo / ".beads-runner.toml"
    config.write_text(config.read_text().replace("[engine]\n", '[engine]\nstep_timeout = "4s"\n', 1))
    git(hrig.repo, "commit", "-q", "-am", "short steps")
    # bd's close hangs once for longer than the commit step may take: Hatchet cancels the step, and
    # its retry finds the landed commit and closes the issue, once.
    faults = write_faults(hrig.tmp / "faults.json", {"command": "close", "kind": "sleep", "seconds": 12})
    hrig.workers.env = hrig.env(BD_STANDIN_FAULTS=str(faults))
    issue_id = hrig.issue("Quick work", "write")
    hrig.workers.start("w1")
    result = hrig.run(timeout=300, BD_STANDIN_FAULTS=str(faults))
    assert result.returncode == 0, result.stdout[-3000:] + hrig.logs()
    assert len(hrig.commits_for(issue_id)) == 1
    shown = issue(hrig.repo, issue_id)
    assert shown["status"] == "closed" and hrig.commits_for(issue_id)[0][:8] in shown["close_reason"]
    events = [json.loads(line) for line in (hrig.repo / ".beads-runner" / "logs" / "runner.jsonl").read_text()
              .splitlines() if line.startswith("{")]
    commit_tries = {e.get("attempt") for e in events if e.get("step") == "commit" and e.get("run_id")}
    assert 2 in commit_tries, sorted(commit_tries)  # the hung try was cancelled; the retry went on
    assert "cancel step run" in hrig.workers.log("w1")  # the engine's timeout reached the worker
    assert [c for c in logged_calls(hrig.tmp / "bd.log") if c[:1] == ["close"]]
    assert len(hrig.started(issue_id)) == 1  # one session: only the commit step was tried again
