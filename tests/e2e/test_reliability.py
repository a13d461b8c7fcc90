"""Faults a runner left alone overnight meets, injected for real: two runners on one repository,
stalled and endless sessions, a gate past its timeout, crashing agents, a flaky bd, a git
index.lock, hostile issue text, and SIGTERM. Real processes, real signals, real git, the bd stand-in;
the agent is the `command` kind (a real subprocess) so each case takes seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import BEADS_RUNNER, git, issue, max_overlap
from tests.helpers import processes_with
from tests.fakes.bd_standin import bd_json, create_issue, logged_calls, make_beads_repo, standin_env, write_faults

AGENT = textwrap.dedent("""\
    import json, os, subprocess, sys, time
    from pathlib import Path
    issue = os.environ["BEADS_ISSUE_ID"]
    marks = Path(os.environ["MARKS"])
    marks.mkdir(exist_ok=True)
    behaviour = json.loads(Path(os.environ["BEHAVIOUR"]).read_text()).get(issue, "write")
    count_file = marks / f"{issue}.count"
    attempt = int(count_file.read_text()) + 1 if count_file.exists() else 1
    count_file.write_text(str(attempt))
    prompt = sys.stdin.read()
    (marks / f"{issue}.prompt.{attempt}").write_text(prompt)

    def log(event):
        with open(marks / "sessions.log", "a") as fh:
            fh.write(json.dumps({"issue": issue, "event": event, "t": time.time(), "pid": os.getpid()}) + "\\n")

    log("start")
    first = attempt == 1
    if behaviour == "stall_once" and first:
        print("thinking...", flush=True)
        time.sleep(600)
    if behaviour == "busy_once" and first:
        while True:
            print("still going", flush=True)
            time.sleep(0.2)
    if behaviour == "crash_once" and first:
        print("agent crashed: out of memory", file=sys.stderr)
        sys.exit(3)
    if behaviour.startswith("sleep:"):
        end = time.time() + float(behaviour.split(":")[1])
        while time.time() < end:
            print("working", flush=True)
            time.sleep(0.2)
    Path(f"work-{issue}.txt").write_text(f"done by attempt {attempt}\\n")
    if behaviour == "index_lock":
        lock = subprocess.run(["git", "rev-parse", "--git-path", "index.lock"], capture_output=True,
                              text=True).stdout.strip()
        Path(lock).write_text("")
    log("end")
    print(f"Wrote work-{issue}.txt.")
""")


@pytest.fixture
def rig(tmp_path):
    """A bd (stand-in) repository whose agent is the script above; returns a small helper."""
    return Rig(tmp_path)


class Rig:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.repo = tmp / "repo"
        self.marks = tmp / "marks"  # the agent's own notes: writable in its sandbox (agent.writable)
        self.marks.mkdir()
        self.behaviour: dict[str, str] = {}
        (tmp / "agent.py").write_text(AGENT)
        self.repo.mkdir()
        git(self.repo, "init", "-q", "-b", "main")
        git(self.repo, "config", "user.name", "T")
        git(self.repo, "config", "user.email", "t@example.com")
        (self.repo / ".gitignore").write_text(".beads-runner/\n")
        make_beads_repo(self.repo, prefix="rl")
        self.configure()

    def configure(self, *, stall="20s", timeout="60s", max_sessions=3, gate=None, gate_timeout="1m",
                  grace="30s", sandbox="auto") -> None:
        gate_block = ""
        if gate:
            gate_block = f'[[gates]]\nname = "check"\nrun = "{gate}"\ntimeout = "{gate_timeout}"\n'
        (self.repo / ".beads-runner.toml").write_text(textwrap.dedent(f"""\
            sandbox = "{sandbox}"
            [tracker]
            poll_interval = "1s"
            [agent]
            kind = "command"
            command = "{sys.executable} {self.tmp / 'agent.py'}"
            timeout = "{timeout}"
            stall_timeout = "{stall}"
            writable = ["{self.marks}"]
            [engine]
            max_sessions = {max_sessions}
            grace_period = "{grace}"
            [engine.retry]
            backoff = "0.2s"
            """) + gate_block)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", "config", "--allow-empty")

    def env(self, **extra: str) -> dict[str, str]:
        (self.marks / "behaviour.json").write_text(json.dumps(self.behaviour))
        env = standin_env(MARKS=str(self.marks), BEHAVIOUR=str(self.marks / "behaviour.json"),
                          BD_STANDIN_LOG=str(self.tmp / "bd.log"))
        env.update(extra)
        return env

    def issue(self, title: str, behaviour: str = "write", *flags: str) -> str:
        issue_id = create_issue(self.repo, title, *flags)
        self.behaviour[issue_id] = behaviour
        return issue_id

    def start(self, **env: str) -> subprocess.Popen:
        return subprocess.Popen([str(BEADS_RUNNER), "--repo", str(self.repo), "start", "--once"], env=self.env(**env),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

    def run(self, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BEADS_RUNNER), "--repo", str(self.repo), "start", "--once"], env=self.env(**env),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def sessions(self) -> list[dict]:
        path = self.marks / "sessions.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def attempts(self, issue_id: str) -> int:
        path = self.marks / f"{issue_id}.count"
        return int(path.read_text()) if path.exists() else 0

    def commits_for(self, issue_id: str) -> list[str]:
        return git(self.repo, "log", "main", "--format=%H", f"--grep=Beads-Issue: {issue_id}").split()

    def comments(self, issue_id: str) -> list[str]:
        return [c["text"] for c in bd_json(self.repo, "comments", issue_id)]


def agent_processes(marker: str) -> list[int]:
    return processes_with(marker)



def test_two_runners_on_one_repository_share_the_cap_and_never_the_same_issue(rig):
    ids = [rig.issue(f"Task {n}", "sleep:1.5") for n in range(7)]
    first, second = rig.start(), rig.start()
    out1, _ = first.communicate(timeout=240)
    out2, _ = second.communicate(timeout=240)
    assert first.returncode == 0, out1[-3000:]
    assert second.returncode == 0, out2[-3000:]
    sessions = rig.sessions()
    starts = [s for s in sessions if s["event"] == "start"]
    assert sorted(s["issue"] for s in starts) == sorted(ids)  # each issue worked exactly once
    ends = {s["issue"]: s["t"] for s in sessions if s["event"] == "end"}
    overlap = max_overlap([(s["t"], ends[s["issue"]]) for s in starts])
    # Both runners together never exceed the cap; that they reach it exactly depends on timing.
    assert 2 <= overlap <= 3
    for issue_id in ids:
        assert issue(rig.repo, issue_id)["status"] == "closed"
        assert len(rig.commits_for(issue_id)) == 1


def test_a_stalled_session_is_killed_and_retried(rig):
    rig.configure(stall="1s")
    stuck = rig.issue("Stalls once", "stall_once")
    result = rig.run()
    assert result.returncode == 0, result.stderr[-3000:]
    assert rig.attempts(stuck) == 2
    assert issue(rig.repo, stuck)["status"] == "closed"
    assert "no output" in result.stderr and "stall" in result.stderr
    assert not agent_processes(str(rig.tmp / "agent.py"))  # the stalled one was killed, group and all


def test_a_session_past_its_timeout_is_killed_and_retried(rig):
    rig.configure(timeout="2s", stall="1m")
    endless = rig.issue("Never ends once", "busy_once")
    result = rig.run()
    assert result.returncode == 0, result.stderr[-3000:]
    assert rig.attempts(endless) == 2
    assert "agent.timeout" in result.stderr
    assert issue(rig.repo, endless)["status"] == "closed"
    assert not agent_processes(str(rig.tmp / "agent.py"))


def test_a_gate_past_its_timeout_fails_with_that_reason(rig):
    rig.configure(gate=f"{sys.executable} -c 'import time; time.sleep(60)'", gate_timeout="1s")
    slow = rig.issue("Slow gate")
    result = rig.run()
    assert result.returncode == 1
    shown = issue(rig.repo, slow)
    assert shown["status"] == "blocked" and "needs-human" in shown["labels"]
    assert any("check: timed out after 1s" in text for text in rig.comments(slow)), rig.comments(slow)
    assert not agent_processes("time.sleep(60)")


def test_an_agent_crash_is_retried_and_the_issue_lands(rig):
    crashy = rig.issue("Crashes once", "crash_once")
    result = rig.run()
    assert result.returncode == 0, result.stderr[-3000:]
    assert rig.attempts(crashy) == 2
    assert "out of memory" in result.stderr  # the agent's own words reach the log
    assert issue(rig.repo, crashy)["status"] == "closed"


def test_a_flaky_bd_is_retried_and_nothing_is_left_half_done(rig):
    flaky = rig.issue("Flaky tracker")
    faults = write_faults(rig.tmp / "faults.json",
                          {"command": "ready", "kind": "lock", "times": 2},
                          {"command": "show", "kind": "garbage", "times": 1},
                          {"command": "close", "kind": "error_json_stderr", "message": "transient failure",
                           "times": 1})
    result = rig.run(BD_STANDIN_FAULTS=str(faults))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(faults.read_text()) == []  # every fault fired
    shown = issue(rig.repo, flaky)
    assert shown["status"] == "closed" and len(rig.commits_for(flaky)) == 1
    closes = [c for c in logged_calls(rig.tmp / "bd.log") if c and c[0] == "close"]
    assert len(closes) == 2  # the failed one, then the one that closed it


def test_a_left_behind_git_index_lock_is_reported_with_its_fix_and_the_work_kept(rig):
    rig.configure(sandbox="off")  # a sandboxed agent cannot write into .git: here it plays a killed git
    locked = rig.issue("Leaves an index.lock", "index_lock")
    result = rig.run()
    assert result.returncode == 1
    text = "\n".join(rig.comments(locked))
    assert "index.lock" in text and "delete that file" in text
    assert (rig.repo / ".beads-runner" / "worktrees" / locked / f"work-{locked}.txt").exists()
    assert issue(rig.repo, locked)["status"] == "blocked"


HOSTILE_TITLES = [
    "$(touch PWNED) and `touch PWNED2`",
    "semi; rm -rf ~; echo",
    "line one\nline two\r\nline three",
    "quotes ' \" and \\ backslashes",
    "unicode: Ünïcødé ✓ 漢字 \u202e",
    "",
]


def test_hostile_issue_text_stays_data(rig):
    ids = [rig.issue(title) for title in HOSTILE_TITLES[:-1]]
    empty = rig.issue("to be emptied")
    big = rig.issue("Huge description")
    # An empty title and a 1 MB description cannot be given to `bd create` (no empty titles; a 1 MB
    # argument exceeds the OS limit): put them in the stand-in's store, which is bd's export format.
    store = rig.repo / ".beads" / "issues.jsonl"
    lines = [json.loads(line) for line in store.read_text().splitlines()]
    for line in lines:
        if line["id"] == empty:
            line["title"] = ""
        if line["id"] == big:
            line["description"] = "x" * 1_000_000
    store.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = rig.run(timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for issue_id in [*ids, empty, big]:
        assert issue(rig.repo, issue_id)["status"] == "closed", issue_id
        subject = git(rig.repo, "log", "-1", "--format=%s", rig.commits_for(issue_id)[0]).rstrip("\n")
        assert "\n" not in subject and subject.endswith(f"({issue_id})")
    assert not list(rig.tmp.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))
    prompt = (rig.marks / f"{big}.prompt.1").read_text()
    assert prompt.count("x") >= 1_000_000  # the whole description reached the agent, on stdin


def test_sigterm_lets_the_running_session_finish_then_stops_and_a_restart_lands_it(rig):
    rig.configure(grace="30s")
    slow = rig.issue("Takes a few seconds", "sleep:3")
    waiting = rig.issue("Waits its turn", "write", "--deps", slow)
    proc = rig.start()
    deadline = time.monotonic() + 60
    while not rig.sessions() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert "no new claims" in out
    assert [s["event"] for s in rig.sessions()] == ["start", "end"]  # it finished within the grace period
    assert issue(rig.repo, waiting)["status"] == "open"  # nothing new was claimed
    result = rig.run()
    assert result.returncode == 0, result.stderr[-3000:]
    assert issue(rig.repo, slow)["status"] == "closed" and issue(rig.repo, waiting)["status"] == "closed"
    assert rig.attempts(slow) == 1  # resumed after the session, not redone


def test_a_second_signal_stops_the_session_at_once_and_the_run_resumes(rig):
    rig.configure(grace="60s")
    slow = rig.issue("Long session", "sleep:120")
    proc = rig.start()
    deadline = time.monotonic() + 60
    while not rig.sessions() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    # The second signal only once the first was handled: two sent close together can reach the
    # runner as one, on a busy machine, and then the test would measure the grace period instead.
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "no new claims" in line:
            break
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    out = "".join(seen) + rest
    assert time.monotonic() - started < 45  # stopped now, not at the end of its 60 s grace period
    assert "stopping now" in out
    assert not agent_processes(str(rig.tmp / "agent.py"))
    assert issue(rig.repo, slow)["status"] == "in_progress"  # still ours, resumable
    rig.behaviour[slow] = "write"
    result = rig.run()
    assert result.returncode == 0, result.stderr[-3000:]
    assert issue(rig.repo, slow)["status"] == "closed"
