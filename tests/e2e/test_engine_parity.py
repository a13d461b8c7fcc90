"""Both engines, one workflow: the same scripted scenario on two identical repositories, one run by
the embedded engine, the other by the Hatchet tasks driven at the SDK boundary (`aio_mock_run`, and
the on-failure task with the error stored as the engine stores it). Real git and a real subprocess
agent in both. The step calls, their outputs, the tracker's end state and the target's tree must
be the same. A second test runs the scenario on a real Hatchet engine (`hatchet up`, a worker,
`start --once`) against the embedded engine: the same tracker state and the same tree."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import git, new_repo
from beads_runner.config import load_config
from beads_runner.daemon import Runner, build_engine
from beads_runner.services import Services, register_services
from beads_runner.tracker.jsonl import JsonlTracker
from workflows import hatchet as hb
from workflows.local import LocalEngine
from workflows.task_flow import TASK_FLOW, TaskInput
from tests.unit.test_hatchet import RecordingChannel, fake_token  # noqa: F401 - the fake token helper

AGENT = textwrap.dedent("""\
    import os, sys
    sys.stdin.read()
    issue = os.environ["BEADS_ISSUE_ID"]
    files = {
        "p-x": {"pkg/x.py": "X = 1\\n"},
        "p-y": {"pkg/y.py": "from pkg.x import X\\nY = X + 1\\n"},
        "p-z": {"pkg/z.py": "Z = 0\\n", "tests/test_z.py":
                "import unittest\\nfrom pkg.z import Z\\n\\n\\nclass T(unittest.TestCase):\\n"
                "    def test_z(self):\\n        self.assertEqual(Z, 26)\\n"},
    }[issue]
    for path, text in files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").write(text)
    print(f"{issue}: wrote {', '.join(files)}")
""")



def make_repo(path: Path, agent: Path) -> Path:
    new_repo(path)
    # A test on the target: a test gate that runs no test fails.
    base_test = "import unittest\n\n\nclass T(unittest.TestCase):\n    def test_ok(self):\n        self.assertTrue(1)\n"
    for rel, text in {"pkg/__init__.py": "", "tests/__init__.py": "", ".gitignore": ".beads-runner/\n",
                      "tests/test_base.py": base_test}.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    (path / ".beads-runner.toml").write_text(textwrap.dedent(f"""\
        [tracker]
        kind = "jsonl"
        [agent]
        kind = "command"
        command = "{sys.executable} {agent}"
        [engine.retry]
        backoff = "0.05s"
        [[gates]]
        name = "tests"
        run = "{sys.executable} -m unittest discover -s tests -t . -q"
        """))
    (path / ".beads").mkdir()
    (path / ".beads" / "issues.jsonl").write_text("")
    tracker = JsonlTracker(path)
    tracker.create("Add x", id="p-x", priority=1)
    tracker.create("Add y on x", id="p-y", priority=0, deps=["p-x"])
    tracker.create("Add z", id="p-z", priority=2)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "init")
    return path


def spied(calls: list):
    def spy(spec):
        def fn(inp, ctx):
            try:
                out = spec.fn(inp, ctx)
            except Exception as exc:
                calls.append((inp.issue_id, spec.name, "raised", type(exc).__name__, getattr(exc, "reason", "")))
                raise
            calls.append((inp.issue_id, spec.name, "returned", normalise(out.model_dump(mode="json")), ""))
            return out

        return dataclasses.replace(spec, fn=fn)

    def on_failure(inp, run_id, step, error, attempts):
        calls.append((inp.issue_id, "on-failure", step, error.reason, attempts))
        return TASK_FLOW.on_failure(inp, run_id, step, error, attempts)

    return dataclasses.replace(TASK_FLOW, steps=tuple(spy(s) for s in TASK_FLOW.steps), on_failure=on_failure)


VOLATILE = re.compile(
    r"(run-[0-9a-z-]+"  # embedded run ids
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # Hatchet run ids
    r"|[0-9a-f]{40}|[0-9a-f]{8}(?= on main)"  # commit shas (the trees are compared instead)
    r"|/tmp/\S+?/(local|hatchet)/"  # the two repositories' paths
    r"|\b\d+\.\d+s\b)"  # durations in a failing gate's report ("[FAIL] tests 0.1s", "Ran 1 test in 0.004s")
)


def normalise(value):
    """Drop what must differ between two runs (ids, shas, paths, timings)."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()
                if k not in {"duration_s", "session_id", "gated_tree", "log_path", "updated_at", "started_at",
                             "created_at", "closed_at", "worktree"}}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, str):
        return VOLATILE.sub("<v>", value)
    return value


def end_state(repo: Path) -> dict:
    tracker = JsonlTracker(repo)
    issues = {}
    for issue_id in ("p-x", "p-y", "p-z"):
        issue = tracker.show(issue_id)
        issues[issue_id] = (issue.status, sorted(issue.labels), normalise(issue.close_reason),
                            [normalise(c["text"]) for c in tracker.comments(issue_id)])
    # The tree but for .beads/: the tracker's file carries second-precision timestamps (compared
    # above, normalised, through the tracker itself).
    tree = [line for line in git(repo, "ls-tree", "-r", "main").splitlines() if "\t.beads/" not in line]
    return {"tree": tree, "issues": issues,
            "subjects": sorted(git(repo, "log", "main", "--format=%s").splitlines())}


def run_embedded(repo: Path, calls: list) -> None:
    svc = register_services(Services(repo, load_config(repo)))
    template = build_engine(svc)
    engine = LocalEngine(template.db_path, spied(calls), max_sessions=1, retry=template.retry,
                         step_timeouts=template.step_timeouts, before_resume=template.before_resume)
    Runner(svc, engine=engine).run(once=True, poll_interval=0.1)


def run_hatchet_tasks(repo: Path, calls: list, monkeypatch) -> None:
    """Drive the registered Hatchet tasks as the engine would, one issue at a time (max_sessions = 1)."""
    from hatchet_sdk.exceptions import TaskRunError

    monkeypatch.setenv("HATCHET_CLIENT_TOKEN", fake_token())
    monkeypatch.setenv("HATCHET_CLIENT_TLS_STRATEGY", "none")
    monkeypatch.setenv("HATCHET_CLIENT_TENACITY_MAX_ATTEMPTS", "1")
    svc = register_services(Services(repo, load_config(repo)))
    wf = hb.build_workflow(hb.make_client(), svc.config, flow=spied(calls), channel=RecordingChannel)
    tasks = wf.beads_tasks
    while (issue := svc.tracker.claim_next()) is not None:
        inp = TaskInput(issue_id=issue.id, repo=str(repo))
        parents: dict = {}
        for spec in TASK_FLOW.steps:
            try:
                out = asyncio.run(tasks[spec.name].aio_mock_run(inp, parent_outputs=dict(parents)))
            except Exception as exc:  # the engine stores the error and runs the on-failure task
                task = wf._on_failure_task
                ctx = task._create_mock_context(inp)
                ctx._data.step_run_errors = {
                    spec.name: TaskRunError.from_exception(exc, "tr-1").serialize(include_metadata=True)}
                asyncio.run(task.aio_call(ctx))
                break
            parents[spec.name] = out.model_dump(mode="json")


@pytest.mark.timeout(300)
def test_the_embedded_and_the_hatchet_engine_make_the_same_step_calls_and_end_the_same(tmp_path, monkeypatch):
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    for repo in ("local", "hatchet"):
        make_repo(tmp_path / repo, agent)
        cfg = tmp_path / repo / ".beads-runner.toml"
        cfg.write_text(cfg.read_text().replace("[engine.retry]", "[engine]\nmax_sessions = 1\n[engine.retry]"))
        git(tmp_path / repo, "commit", "-qam", "one session at a time: a deterministic order")
    monkeypatch.chdir(tmp_path)  # the Hatchet client reads .env files in the cwd

    local_calls: list = []
    hatchet_calls: list = []
    run_embedded(tmp_path / "local", local_calls)
    run_hatchet_tasks(tmp_path / "hatchet", hatchet_calls, monkeypatch)

    def by_issue(calls):
        out: dict = {}
        for call in calls:
            out.setdefault(call[0], []).append(call[1:])
        return out

    local, remote = by_issue(local_calls), by_issue(hatchet_calls)
    assert set(local) == {"p-x", "p-y", "p-z"}
    assert local == remote
    # the scenario did what it says: two landed, one failed its gates and went to a person
    assert [c[0] for c in local["p-z"]][-1] == "on-failure"
    state_local, state_hatchet = end_state(tmp_path / "local"), end_state(tmp_path / "hatchet")
    assert state_local == state_hatchet
    assert state_local["issues"]["p-x"][0] == "closed" and state_local["issues"]["p-z"][0] == "blocked"


@pytest.mark.timeout(600)
def test_the_embedded_engine_and_a_real_hatchet_engine_end_the_same(tmp_path, hatchet_engine):  # noqa: F811
    """The same scenario through `beads-runner start --once` on each engine, Hatchet's being the real
    one (`hatchet up`, a `beads-runner worker`): the same tracker state, the same tree."""
    import os
    import subprocess

    from tests.e2e.hatchet_real import BEADS_RUNNER, Workers, use_hatchet

    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    for name in ("local", "hatchet"):
        repo = make_repo(tmp_path / name, agent)
        cfg = repo / ".beads-runner.toml"
        cfg.write_text(cfg.read_text().replace("[engine.retry]", "[engine]\nmax_sessions = 1\n[engine.retry]")
                       .replace("[agent]\n", f'[agent]\nwritable = ["{tmp_path}"]\n'))
        git(repo, "commit", "-qam", "one session at a time: a deterministic order")
    use_hatchet(tmp_path / "hatchet")
    env = hatchet_engine.env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    workers = Workers(tmp_path / "hatchet", env)
    workers.start("w1")
    try:
        results = {name: subprocess.run([str(BEADS_RUNNER), "--repo", str(tmp_path / name), "start", "--once"],
                                        env=env, capture_output=True, text=True, timeout=400,
                                        stdin=subprocess.DEVNULL)
                   for name in ("local", "hatchet")}
    finally:
        workers.stop()
    for name, result in results.items():
        assert result.returncode == 1, (name, result.stdout[-3000:], result.stderr[-3000:])  # p-z failed

    def work(repo: Path) -> dict:
        """end_state, but for the config itself (engine.kind differs, and its commit)."""
        state = end_state(repo)
        # end_state's tree already leaves out .beads/ (second-precision timestamps; the tracker's
        # state is compared through the tracker): reading the tree again here put it back, and the
        # test failed whenever the two runs closed an issue in different seconds.
        state["tree"] = [line for line in state["tree"] if not line.endswith("\t.beads-runner.toml")]
        state["subjects"] = [s for s in state["subjects"] if s != "Run on Hatchet"]
        return state

    state_local, state_hatchet = work(tmp_path / "local"), work(tmp_path / "hatchet")
    assert state_local == state_hatchet
    assert state_local["issues"]["p-x"][0] == "closed" and state_local["issues"]["p-z"][0] == "blocked"
