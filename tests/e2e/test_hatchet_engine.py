"""The whole flow on a real Hatchet engine (built by `make tools`, run by `beads-runner hatchet up`),
with two `beads-runner worker` processes, the real opencode and the scripted model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beads_runner.demo import ISSUES, build_sample_repo, demo_script
from beads_runner.scripted_model import ScriptedModelServer
from bench.stats import max_overlap
from tests.e2e.conftest import OPENCODE, git
from tests.e2e.hatchet_real import (
    BEADS_RUNNER,
    Workers,
    session_intervals_from,
    session_log_wrapper,
    use_hatchet,
)

pytestmark = pytest.mark.e2e


def cli(repo: Path, env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BEADS_RUNNER), "--repo", str(repo), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def demo_on_hatchet(tmp_path, hatchet_engine, opencode_bin):  # noqa: F811
    """The demo's repository and backlog, on the real engine, with an agent that logs its sessions."""
    repo = tmp_path / "demo"
    tracker = build_sample_repo(repo)
    sessions = tmp_path / "sessions.ndjson"
    wrapper = session_log_wrapper(tmp_path / "opencode-logged", sessions, OPENCODE)
    text = (repo / ".beads-runner.toml").read_text()
    # The session log lives outside the worktree: the sandbox must let the wrapper write it.
    text = text.replace('kind = "opencode"\n', f'kind = "opencode"\ncommand = "{wrapper}"\nwritable = ["{tmp_path}"]\n')
    (repo / ".beads-runner.toml").write_text(text)
    git(repo, "commit", "-q", "-am", "Log the agent's sessions")
    use_hatchet(repo)
    server = ScriptedModelServer(demo_script()).start()
    env = hatchet_engine.env()
    env.update(server.opencode_env())
    env["XDG_DATA_HOME"] = str(tmp_path / "opencode-data")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    workers = Workers(repo, env)
    try:
        yield repo, tracker, env, workers, sessions
    finally:
        workers.stop()
        server.stop()


def test_demo_scenario_lands_in_dependency_order_across_two_workers(demo_on_hatchet):
    repo, tracker, env, workers, sessions = demo_on_hatchet
    workers.start("w1")
    workers.start("w2")
    result = cli(repo, env, "start", "--once", "--poll-interval", "1")
    (repo.parent / "start.log").write_text(result.stdout + result.stderr)
    logs = result.stdout + result.stderr + workers.log("w1") + workers.log("w2")
    assert result.returncode == 1, logs[-6000:]  # demo-div goes to a person: a failed run

    states = {i[0]: tracker.show(i[0]) for i in ISSUES}
    for issue_id in ("demo-add", "demo-total", "demo-mul", "demo-docs"):
        assert states[issue_id].status == "closed", (issue_id, logs[-6000:])
        sha = git(repo, "log", "main", "--format=%H", f"--grep=Beads-Issue: {issue_id}$").split()
        assert len(sha) == 1, (issue_id, sha)
        assert sha[0][:8] in states[issue_id].close_reason
    assert states["demo-div"].status == "blocked"
    assert "needs-human" in states["demo-div"].labels
    assert git(repo, "rev-parse", "--verify", "-q", "refs/heads/beads-runner/demo-div").strip()

    order = git(repo, "log", "main", "--reverse", "--format=%(trailers:key=Beads-Issue,valueonly)").split()
    assert order.index("demo-add") < order.index("demo-total")

    intervals = session_intervals_from(sessions)
    assert max_overlap([(a, b) for a, b, _ in intervals]) <= 3
    assert max_overlap([(a, b) for a, b, _ in intervals]) >= 2
    # never two agents in one worktree at once
    by_tree: dict[str, list[tuple[float, float]]] = {}
    for a, b, cwd in intervals:
        by_tree.setdefault(cwd, []).append((a, b))
    assert all(max_overlap(v) == 1 for v in by_tree.values()), by_tree

    # status, logs and review read the runs back from the engine, each issue's own and only those
    status = cli(repo, env, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert "demo-div" in status.stdout
    total_sha = git(repo, "log", "main", "--format=%H", "--grep=Beads-Issue: demo-total$").strip()
    logs_out = cli(repo, env, "logs", "demo-total", "--json")
    assert logs_out.returncode == 0, logs_out.stderr
    lines = logs_out.stdout.splitlines()
    assert all(line.startswith("{") for line in lines if line.strip()), lines[:5]  # --json: only JSON
    events = [json.loads(line) for line in lines if line.strip()]
    engine_events = [e for e in events if e.get("source") == "engine"]
    assert any(e.get("event") == "landed" and e.get("sha") == total_sha for e in engine_events), events[-5:]
    assert {e["run_id"] for e in engine_events} == {engine_events[0]["run_id"]}  # one run: demo-total's
    assert not any(e.get("sha") and e.get("sha") != total_sha for e in engine_events)
    review = cli(repo, env, "review", "demo-total")
    assert review.returncode == 0 and total_sha[:8] in review.stdout, review.stdout + review.stderr
    add_sha = git(repo, "log", "main", "--format=%H", "--grep=Beads-Issue: demo-add$").strip()
    assert add_sha[:8] not in review.stdout
