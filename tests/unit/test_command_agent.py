"""CommandAgent with small real subprocesses: results, limits, cancel and process-group kills."""

from __future__ import annotations

import json

import os
import shlex
import sys
import threading
import time
from pathlib import Path

import pytest

from beads_runner.agent import make_agent
from beads_runner.agent.base import Agent, SessionRequest
from beads_runner.agent.command import CommandAgent
from beads_runner.agent.opencode import OpenCodeAgent
from beads_runner.config import AgentConfig
from beads_runner.errors import AgentUnavailable

PY = sys.executable


def _agent(tmp_path: Path, code: str, **config) -> CommandAgent:
    script = tmp_path / "agent_script.py"
    script.write_text(code, encoding="utf-8")
    cfg = AgentConfig(kind="command", command=f"{shlex.quote(PY)} -u {shlex.quote(str(script))}", **config)
    agent = make_agent(cfg, tmp_path)
    assert isinstance(agent, CommandAgent)
    return agent


def _request(tmp_path: Path, **kw) -> SessionRequest:
    workdir = tmp_path / "wt"
    workdir.mkdir(exist_ok=True)
    return SessionRequest(issue_id="bd-7", prompt="Fix the bug in bd-7\nplease", workdir=workdir, **kw)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its new parent) counts as gone
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


SUCCESS = """
import os, sys, pathlib
prompt = sys.stdin.read()
pathlib.Path("out.txt").write_text(prompt)
print("issue", os.environ["BEADS_ISSUE_ID"], os.environ["BEADS_RUNNER_WORKDIR"] == os.getcwd(), os.environ.get("EXTRA"))
print("", file=sys.stderr)
for i in range(8):
    print(f"line {i}")
print("")
"""


def test_success_runs_in_worktree_with_prompt_and_env(tmp_path):
    agent = _agent(tmp_path, SUCCESS, env={"EXTRA": "yes"}, args=["--ignored-arg"])
    events = []
    log = tmp_path / "logs" / "session.log"
    result = agent.run(_request(tmp_path, log_path=log), on_event=events.append)
    assert result.ok, result.output_tail
    assert result.reason == "" and result.exit_code == 0
    assert (tmp_path / "wt" / "out.txt").read_text() == "Fix the bug in bd-7\nplease"
    assert result.summary == "line 3\nline 4\nline 5\nline 6\nline 7"
    assert result.events == 10  # stdout lines, the blank one included
    assert not (result.timed_out or result.stalled or result.cancelled)
    assert any(e["text"] == "issue bd-7 True yes" for e in events if e["stream"] == "stdout")
    assert log.read_text().splitlines()[0] == "issue bd-7 True yes"
    assert agent.name == Path(PY).name
    assert isinstance(agent, Agent)


def test_nonzero_exit_is_not_ok_and_keeps_output_tail(tmp_path):
    agent = _agent(tmp_path, "import sys\nprint('working')\nprint('boom: disk full', file=sys.stderr)\nsys.exit(3)\n")
    result = agent.run(_request(tmp_path))
    assert not result.ok
    assert result.exit_code == 3
    assert result.reason == f"{agent.name} exited 3: boom: disk full"  # with the last stderr line: why
    assert result.retryable
    assert "boom: disk full" in result.output_tail
    assert "working" in result.output_tail


def test_wall_timeout_kills(tmp_path):
    agent = _agent(tmp_path, "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.1)\n",
                   timeout=1.0, stall_timeout=30)
    started = time.monotonic()
    result = agent.run(_request(tmp_path))
    assert time.monotonic() - started < 30  # killed at its timeout: it would never end by itself
    assert not result.ok and result.timed_out and not result.stalled
    assert "agent.timeout (1s)" in result.reason
    assert result.exit_code == -15  # SIGTERM was enough


def test_stall_timeout_kills_a_silent_process(tmp_path):
    agent = _agent(tmp_path, "import time\nprint('started', flush=True)\ntime.sleep(60)\n",
                   timeout=60, stall_timeout=1.0)
    started = time.monotonic()
    result = agent.run(_request(tmp_path))
    assert time.monotonic() - started < 30  # killed when silent, not after its 60 s sleep
    assert not result.ok and result.stalled and not result.timed_out
    assert "no output" in result.reason and "1s" in result.reason


def test_stderr_output_counts_as_activity(tmp_path):
    # 3 s of output 0.1 s apart outlives the 2 s stall timeout only because each line counts:
    # a twentyfold margin between the gaps and the timeout, however loaded the machine.
    code = "import sys, time\nfor i in range(30):\n    print('.', file=sys.stderr, flush=True)\n    time.sleep(0.1)\n"
    agent = _agent(tmp_path, code, timeout=60, stall_timeout=2.0)
    result = agent.run(_request(tmp_path))
    assert result.ok, result.reason


def test_cancel_stops_the_session(tmp_path):
    agent = _agent(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(60)\n", timeout=60, stall_timeout=60)
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    started = time.monotonic()
    try:
        result = agent.run(_request(tmp_path), cancel=cancel)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 30  # stopped by the cancel, not after its 60 s sleep
    assert result.cancelled and not result.ok and result.reason == "session cancelled"
    assert not result.retryable


GRANDCHILD = """
import subprocess, sys, time, pathlib, signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent shrugs SIGTERM off: SIGKILL must follow
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
pathlib.Path("grandchild.pid").write_text(str(child.pid))
print("spawned", child.pid, flush=True)
time.sleep(120)
"""


def test_whole_process_group_is_killed_on_stall(tmp_path):
    # 5 s: the stall must come after the script has spawned its grandchild (one Python start and one
    # spawn, which a loaded machine can stretch past 1 s), or there is no grandchild to check.
    agent = _agent(tmp_path, GRANDCHILD, timeout=60, stall_timeout=5.0)
    result = agent.run(_request(tmp_path))
    assert result.stalled
    grandchild = int((tmp_path / "wt" / "grandchild.pid").read_text())
    assert _wait_gone(grandchild), "the grandchild survived the process-group kill"
    assert result.exit_code == -9


def test_leftover_children_are_killed_after_a_normal_exit(tmp_path):
    code = ("import subprocess, sys, pathlib\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
            " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "pathlib.Path('grandchild.pid').write_text(str(c.pid))\nprint('done')\n")
    agent = _agent(tmp_path, code, timeout=30, stall_timeout=30)
    result = agent.run(_request(tmp_path))
    assert result.ok
    assert _wait_gone(int((tmp_path / "wt" / "grandchild.pid").read_text()))


def test_a_raising_event_callback_does_not_break_the_session(tmp_path):
    agent = _agent(tmp_path, "print('a')\nprint('b')\n")

    def bad(event):
        raise RuntimeError("callback bug")

    result = agent.run(_request(tmp_path), on_event=bad)
    assert result.ok
    assert "callback bug" in result.output_tail


def test_missing_or_unknown_command_is_unavailable(tmp_path):
    agent = make_agent(AgentConfig(kind="command"), tmp_path)
    assert agent.name == "command"
    with pytest.raises(AgentUnavailable) as err:
        agent.run(_request(tmp_path))
    assert err.value.fix and "agent.command" in err.value.fix
    missing = make_agent(AgentConfig(kind="command", command="no-such-agent-xyz --flag"), tmp_path)
    assert missing.name == "no-such-agent-xyz"
    with pytest.raises(AgentUnavailable, match="not on PATH"):
        missing.run(_request(tmp_path))


def test_make_agent_picks_by_kind(tmp_path):
    assert isinstance(make_agent(AgentConfig(), tmp_path), OpenCodeAgent)
    assert isinstance(make_agent(AgentConfig(kind="command", command="cat"), tmp_path), CommandAgent)


def test_opencode_executable_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    fake = tmp_path / "node_modules" / ".bin" / "opencode"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 9.9.9\n")
    fake.chmod(0o755)
    agent = OpenCodeAgent(AgentConfig(), tmp_path)
    assert agent.resolve_executable() == str(fake)
    assert agent.version() == "9.9.9"
    bad = OpenCodeAgent(AgentConfig(command="missing-opencode"), tmp_path)
    with pytest.raises(AgentUnavailable) as err:
        bad.resolve_executable()
    assert "npm install opencode-ai@1.18.33" in (err.value.fix or "")
    relative = OpenCodeAgent(AgentConfig(command="node_modules/.bin/opencode"), tmp_path)
    assert relative.resolve_executable() == str(fake)


def test_opencode_argv(tmp_path):
    agent = OpenCodeAgent(AgentConfig(model="scripted/scripted", args=["--pure"]), tmp_path)
    request = SessionRequest(issue_id="bd-1", prompt="p", workdir=tmp_path, title="Fix   the\nthing",
                             session_id="ses_1")
    assert agent.argv("/x/opencode", request) == [
        "/x/opencode", "run", "--format", "json", "--dir", str(tmp_path), "--title", "Fix the thing",
        "--model", "scripted/scripted", "--session", "ses_1", "--pure"]
    bare = OpenCodeAgent(AgentConfig(), tmp_path).argv("oc", SessionRequest(issue_id="bd-2", prompt="p",
                                                                             workdir=tmp_path))
    assert bare == ["oc", "run", "--format", "json", "--dir", str(tmp_path), "--title", "bd-2"]


def test_opencode_env_sets_every_permission_class_and_respects_the_users_keys(monkeypatch, tmp_path):
    from beads_runner.agent.permissions import PERMISSION_CLASSES

    monkeypatch.delenv("OPENCODE_PERMISSION", raising=False)
    env = OpenCodeAgent(AgentConfig(env={"FOO": "1"}), tmp_path)._env()
    permission = json.loads(env["OPENCODE_PERMISSION"])
    assert set(PERMISSION_CLASSES) <= set(permission) and env["FOO"] == "1"
    assert '"ask"' not in json.dumps(permission)  # headless: nobody could answer
    assert permission["external_directory"] == "deny" and permission["doom_loop"] == "deny"
    monkeypatch.setenv("OPENCODE_PERMISSION", '{"edit":"deny"}')
    mine = json.loads(OpenCodeAgent(AgentConfig(), tmp_path)._env()["OPENCODE_PERMISSION"])
    assert mine["edit"] == "deny" and mine["external_directory"] == "deny"


def test_opencode_env_turns_snapshots_off_unless_the_users_config_says(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENCODE_CONFIG_CONTENT", raising=False)
    assert json.loads(OpenCodeAgent(AgentConfig(), tmp_path)._env()["OPENCODE_CONFIG_CONTENT"]) == {"snapshot": False}
    users = {"model": "p/m", "provider": {"p": {"npm": "x"}}}
    monkeypatch.setenv("OPENCODE_CONFIG_CONTENT", json.dumps(users))
    assert json.loads(OpenCodeAgent(AgentConfig(), tmp_path)._env()["OPENCODE_CONFIG_CONTENT"]) == {
        **users, "snapshot": False}
    keep = OpenCodeAgent(AgentConfig(env={"OPENCODE_CONFIG_CONTENT": '{"snapshot": true}'}), tmp_path)._env()
    assert json.loads(keep["OPENCODE_CONFIG_CONTENT"]) == {"snapshot": True}  # agent.env wins, and the user's key
    jsonc = '{"model": "p/m", // a comment opencode accepts\n}'
    monkeypatch.setenv("OPENCODE_CONFIG_CONTENT", jsonc)
    assert OpenCodeAgent(AgentConfig(), tmp_path)._env()["OPENCODE_CONFIG_CONTENT"] == jsonc  # not ours to rewrite
