"""The whole flow on a real bd repository: the real bd (v1.0.5, embedded Dolt, built by `make tools`)
set up with `bd init`, `bd create` and `bd dep add` in a temporary git repository with HOME isolated,
and `beads-runner start --once` as a real subprocess. The agent is the `command` kind (a real
subprocess that writes a file), so each case takes seconds and the tracker is what is tested."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.bd_backends import BdBackend, real_backend
from tests.e2e.conftest import BEADS_RUNNER, git
from tests.realtools import require_real_bd

AGENT = textwrap.dedent("""\
    import json, os, sys, time
    from pathlib import Path
    issue = os.environ["BEADS_ISSUE_ID"]
    marks = Path(os.environ["MARKS"])
    marks.mkdir(exist_ok=True)
    behaviour = json.loads(Path(os.environ["BEHAVIOUR"]).read_text()).get(issue, "write")
    sys.stdin.read()

    def log(event, **extra):
        with open(marks / "sessions.log", "a") as fh:
            fh.write(json.dumps({"issue": issue, "event": event, "t": time.time(), **extra}) + "\\n")

    log("start", seen=sorted(p.name for p in Path().glob("work-*.txt")))
    if behaviour.startswith("sleep:"):
        time.sleep(float(behaviour.split(":")[1]))
    Path(f"work-{issue}.txt").write_text(f"done for {issue}\\n")
    if behaviour == "bad":
        Path("bad.txt").write_text("this breaks the check gate\\n")
    log("end")
    print(f"Wrote work-{issue}.txt.")
""")
CHECK = textwrap.dedent("""\
    import sys
    from pathlib import Path
    if Path("bad.txt").exists():
        print("check: bad.txt must not exist (found it)")
        sys.exit(1)
    print("check: ok")
""")


@pytest.fixture(scope="module")
def real_bd(tmp_path_factory: pytest.TempPathFactory) -> BdBackend:
    return real_backend(require_real_bd(), tmp_path_factory.mktemp("bd-home"))


class RealRig:
    """A git repository with a real bd workspace, a command agent and one `check` gate."""

    def __init__(self, tmp: Path, bd: BdBackend, *, max_sessions: int = 3):
        self.tmp, self.bd = tmp, bd
        self.repo = tmp / "repo"
        self.marks = tmp / "marks"
        self.behaviour: dict[str, str] = {}
        (tmp / "agent.py").write_text(AGENT)
        (tmp / "check.py").write_text(CHECK)
        bd.fresh_workspace(self.repo, prefix="rb")
        (self.repo / ".gitignore").write_text(".beads-runner/\n")
        (self.repo / ".beads-runner.toml").write_text(textwrap.dedent(f"""\
            [tracker]
            command = "{bd.executable}"
            poll_interval = "1s"
            [agent]
            kind = "command"
            command = "{sys.executable} {tmp / 'agent.py'}"
            writable = ["{tmp}"]  # the agent script and its marks live beside the repository
            timeout = "2m"
            stall_timeout = "1m"
            max_attempts = 2
            [engine]
            max_sessions = {max_sessions}
            [engine.retry]
            backoff = "0.2s"
            [[gates]]
            name = "check"
            run = "{sys.executable} {tmp / 'check.py'}"
            timeout = "1m"
            """))
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", "initial")

    def issue(self, title: str, behaviour: str = "write", *flags: str) -> str:
        issue_id = self.bd.create(self.repo, title, *flags)
        self.behaviour[issue_id] = behaviour
        return issue_id

    def env(self) -> dict[str, str]:
        (self.tmp / "behaviour.json").write_text(json.dumps(self.behaviour))
        env = dict(self.bd.env)
        env.update(MARKS=str(self.marks), BEHAVIOUR=str(self.tmp / "behaviour.json"))
        return env

    def argv(self) -> list[str]:
        return [str(BEADS_RUNNER), "--repo", str(self.repo), "start", "--once"]

    def run(self, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(), env=self.env(), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(), env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def sessions(self) -> list[dict]:
        path = self.marks / "sessions.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def commits_for(self, issue_id: str) -> list[str]:
        return git(self.repo, "log", "main", "--format=%H", f"--grep=Beads-Issue: {issue_id}").split()

    def show(self, issue_id: str) -> dict:
        return self.bd.show(self.repo, issue_id)


@pytest.fixture
def rig(tmp_path: Path, real_bd: BdBackend) -> RealRig:
    return RealRig(tmp_path, real_bd)


def test_issues_land_in_dependency_order_and_close_with_reasons_naming_their_commits(rig: RealRig):
    first = rig.issue("Add the base", "write", "-p", "2")
    second = rig.issue("Build on the base", "write", "-p", "0")
    other = rig.issue("Something else", "write", "-p", "1")
    rig.bd.run(rig.repo, "dep", "add", second, first)

    result = rig.run()

    assert result.returncode == 0, result.stderr[-3000:]
    shas = {}
    for issue_id in (first, second, other):
        commits = rig.commits_for(issue_id)
        assert len(commits) == 1, (issue_id, commits)
        shas[issue_id] = commits[0]
        shown = rig.show(issue_id)
        assert shown["status"] == "closed"
        assert shown["close_reason"] == f"Landed {commits[0][:8]} on main (gates: diff=pass check=pass)"
    git(rig.repo, "merge-base", "--is-ancestor", shas[first], shas[second])  # fails the test if not
    starts = {s["issue"]: s for s in rig.sessions() if s["event"] == "start"}
    assert f"work-{first}.txt" in starts[second]["seen"]  # the dependent began on top of its blocker's work
    assert rig.bd.json(rig.repo, "ready") == []


def test_a_failing_issue_gets_a_comment_and_goes_to_a_person_with_needs_human(rig: RealRig):
    bad = rig.issue("Break the check", "bad")

    result = rig.run()

    assert result.returncode == 1
    shown = rig.show(bad)
    assert shown["status"] == "blocked"
    assert "needs-human" in shown["labels"]
    comments = rig.bd.json(rig.repo, "comments", bad)
    texts = [c["text"] for c in comments]
    assert any("failed at step" in t and "bad.txt must not exist" in t for t in texts), texts
    assert {c["author"] for c in comments} == {"beads-runner"}
    assert git(rig.repo, "branch", "--list", f"beads-runner/{bad}").strip()  # the work is kept
    assert rig.commits_for(bad) == []
    assert rig.bd.json(rig.repo, "ready") == []


def test_two_runners_on_one_real_bd_repository_never_work_one_issue_twice(rig: RealRig):
    ids = [rig.issue(f"Task {n}", "sleep:0.5") for n in range(6)]

    first, second = rig.start(), rig.start()
    out1, _ = first.communicate(timeout=300)
    out2, _ = second.communicate(timeout=300)

    assert first.returncode == 0, out1[-3000:]
    assert second.returncode == 0, out2[-3000:]
    started = sorted(s["issue"] for s in rig.sessions() if s["event"] == "start")
    assert started == sorted(ids)  # each issue worked exactly once, by one runner or the other
    for issue_id in ids:
        assert rig.show(issue_id)["status"] == "closed"
        assert len(rig.commits_for(issue_id)) == 1


def test_other_bd_writers_during_a_run_lose_nothing_and_fail_nothing(rig: RealRig):
    """bd's embedded store has one writer at a time. While the runner works, other processes write
    to the same store through bd (a person, a script): every write of both sides must land."""
    ids = [rig.issue(f"Task {n}", "sleep:0.3") for n in range(3)]
    noted = rig.bd.create(rig.repo, "Notes from a person")
    stop = threading.Event()
    outcomes: list[subprocess.CompletedProcess[str]] = []

    def person() -> None:
        n = 0
        while not stop.is_set() and n < 200:
            outcomes.append(rig.bd.run(rig.repo, "comments", "add", noted, f"note {n}", "--json", check=False))
            n += 1

    writer = threading.Thread(target=person)
    writer.start()
    try:
        result = rig.run()
    finally:
        stop.set()
        writer.join()

    assert result.returncode == 0, result.stderr[-3000:]
    for issue_id in ids:
        assert rig.show(issue_id)["status"] == "closed"
        assert len(rig.commits_for(issue_id)) == 1
    assert outcomes  # the person wrote while the runner worked
    failed = [o for o in outcomes if o.returncode != 0]
    assert not failed, failed[0].stderr
    texts = [c["text"] for c in rig.bd.json(rig.repo, "comments", noted)]
    assert texts == [f"note {n}" for n in range(len(outcomes))]


def test_doctor_reports_the_real_bds_version_and_embedded_mode(rig: RealRig):
    rig.issue("Ready work")

    result = subprocess.run([str(BEADS_RUNNER), "--repo", str(rig.repo), "doctor"], env=rig.env(),
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    tracker_line = next(line for line in result.stdout.splitlines() if "tracker" in line)
    assert tracker_line.startswith("[ok  ] tracker"), result.stdout
    version = rig.bd.json(rig.repo, "version")["version"]
    assert f"bd {version} (embedded Dolt store: one writer at a time)" in tracker_line
    assert str(rig.bd.executable) in tracker_line and "1 issue(s) ready" in tracker_line
