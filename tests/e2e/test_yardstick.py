"""Done means done, end to end as a user meets it: an agent cannot move the yardstick (skip the test that
catches its bug, rewrite the make target the gate runs), an ordinary change to a gate-adjacent file
still lands, and a person who closes or takes an issue mid-session wins. Real git, the bd stand-in,
`beads-runner start --once` as a subprocess; the agent is the `command` kind, scripted per issue."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import BEADS_RUNNER, git, issue, recorded_engine
from tests.fakes.bd_standin import bd_json, create_issue, make_beads_repo, run_bd, standin_env

AGENT = textwrap.dedent("""\
    import json, os, sys, time
    from pathlib import Path
    issue = os.environ["BEADS_ISSUE_ID"]
    plan = json.loads(Path(os.environ["PLAN"]).read_text())[issue]
    marks = Path(os.environ["MARKS"])
    marks.mkdir(exist_ok=True)
    sys.stdin.read()
    def mark(event):
        with open(marks / "sessions.log", "a") as fh:
            fh.write(json.dumps({"issue": issue, "event": event, "pid": os.getpid()}) + "\\n")
    mark("start")
    for path, text in plan.get("write", {}).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    end = time.time() + plan.get("sleep", 0)
    while time.time() < end:
        print("working", flush=True)
        time.sleep(0.2)
    if plan.get("exit"):
        print("agent crashed", file=sys.stderr)
        sys.exit(plan["exit"])
    mark("end")
    print("Done: " + ", ".join(plan.get("write", {})))
""")

CALC = "def add(a, b):\n    return a + b\n"
CALC_TEST = textwrap.dedent("""\
    import unittest

    from pkg.calc import add


    class TestAdd(unittest.TestCase):
        def test_add(self):
            self.assertEqual(add(2, 3), 5)
    """)
UNITTEST = f"{sys.executable} -m unittest discover -s tests -t . -q"


class Repo:
    def __init__(self, tmp: Path, *, gate: str = UNITTEST, files: dict[str, str] | None = None, agent: str = ""):
        self.tmp = tmp
        self.path = tmp / "repo"
        self.plan: dict[str, dict] = {}
        (tmp / "agent.py").write_text(AGENT)
        self.path.mkdir()
        git(self.path, "init", "-q", "-b", "main")
        git(self.path, "config", "user.name", "T")
        git(self.path, "config", "user.email", "t@example.com")
        base = {".gitignore": ".beads-runner/\n__pycache__/\n", "pkg/__init__.py": "", "pkg/calc.py": CALC,
                "tests/__init__.py": "", "tests/test_calc.py": CALC_TEST, **(files or {})}
        for rel, text in base.items():
            (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.path / rel).write_text(text)
        (self.path / ".beads-runner.toml").write_text(textwrap.dedent(f"""\
            [tracker]
            poll_interval = "1s"
            [agent]
            kind = "command"
            command = "{sys.executable} {tmp / 'agent.py'}"
            timeout = "2m"
            writable = ["{tmp}"]  # the script, its plan and its marks live beside the repository
            {agent}
            [engine.retry]
            backoff = "0.2s"
            [[gates]]
            name = "tests"
            run = "{gate}"
            timeout = "1m"
            """))
        make_beads_repo(self.path, prefix="ys")
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", "initial")
        self.initial = git(self.path, "rev-parse", "main").strip()

    def issue(self, title: str, plan: dict, *flags: str) -> str:
        issue_id = create_issue(self.path, title, *flags)
        self.plan[issue_id] = plan
        return issue_id

    def env(self) -> dict[str, str]:
        (self.tmp / "plan.json").write_text(json.dumps(self.plan))
        return standin_env(PLAN=str(self.tmp / "plan.json"), MARKS=str(self.tmp / "marks"))

    def run(self) -> subprocess.CompletedProcess:
        return subprocess.run([str(BEADS_RUNNER), "--repo", str(self.path), "start", "--once"], env=self.env(),
                              capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)

    def start(self) -> subprocess.Popen:
        return subprocess.Popen([str(BEADS_RUNNER), "--repo", str(self.path), "start", "--once"], env=self.env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

    def sessions(self) -> list[dict]:
        log = self.tmp / "marks" / "sessions.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def comments(self, issue_id: str) -> list[str]:
        return [c["text"] for c in bd_json(self.path, "comments", issue_id)]

    def landed(self) -> bool:
        return git(self.path, "rev-parse", "main").strip() != self.initial

    def outcome(self, issue_id: str) -> tuple[str, dict]:
        [run] = recorded_engine(self.path).runs(key=issue_id, limit=1)
        return run.status, run.outcome or {}


def assert_handed_over(repo: Repo, issue_id: str, *words: str) -> str:
    shown = issue(repo.path, issue_id)
    assert shown["status"] == "blocked" and "needs-human" in shown["labels"], shown
    comments = repo.comments(issue_id)
    text = next((c for c in comments if "for a person to review" in c), "")
    assert text and all(w in text for w in words), comments
    assert not repo.landed()
    assert git(repo.path, "branch", "--list", f"beads-runner/{issue_id}").strip()  # the work is kept
    return text


def test_a_wrong_fix_hidden_by_skipping_the_test_that_catches_it_is_handed_over(tmp_path):
    repo = Repo(tmp_path)
    skipped = CALC_TEST.replace("    def test_add", "    @unittest.skip('flaky')\n    def test_add")
    bad = repo.issue("Make add() faster", {"write": {"pkg/calc.py": "def add(a, b):\n    return a - b\n",
                                                     "tests/test_calc.py": skipped}})

    result = repo.run()

    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    text = assert_handed_over(repo, bad, "tests/test_calc.py", "TestAdd.test_add skipped", "tests-change")
    assert "failed at step process" in text
    # straight to a person: the agent is not sent back to hide it better
    assert [s["event"] for s in repo.sessions() if s["issue"] == bad] == ["start", "end"]


def test_the_label_tests_change_lets_a_person_allow_a_skip(tmp_path):
    repo = Repo(tmp_path)
    skipped = CALC_TEST.replace("    def test_add", "    @unittest.skip('moved to the slow suite')\n    def test_add")
    allowed = repo.issue("Move add's test to the slow suite", {"write": {"tests/test_calc.py": skipped}},
                         "--labels", "tests-change")

    result = repo.run()

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert issue(repo.path, allowed)["status"] == "closed"
    body = git(repo.path, "log", "-1", "--format=%B", "main")
    assert f"Beads-Issue: {allowed}" in body
    assert "Tests: tests collected=1 passed=0 failed=0 skipped=1" in body


MAKEFILE = f"check:\n\t{UNITTEST}\n\nbuild:\n\t@echo building\n"


def test_a_rewritten_make_target_plus_a_failing_test_is_handed_over(tmp_path):
    repo = Repo(tmp_path, gate="make check", files={"Makefile": MAKEFILE})
    failing = CALC_TEST.replace("add(2, 3), 5", "add(2, 2), 5").replace("test_add", "test_add_more")
    bad = repo.issue("Cover add() better", {"write": {"Makefile": "check:\n\t@true\n\nbuild:\n\t@echo building\n",
                                                      "tests/test_more.py": failing}})

    result = repo.run()

    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert_handed_over(repo, bad, "Makefile", "target 'check' recipe changed", "'@true'", "gates-change")


def test_a_dependency_added_to_pyproject_is_an_ordinary_change_and_lands(tmp_path):
    pyproject = '[project]\nname = "calc"\ndependencies = []\n\n[tool.pytest.ini_options]\naddopts = "-q"\n'
    repo = Repo(tmp_path, files={"pyproject.toml": pyproject})
    dep = repo.issue("Depend on attrs", {"write": {
        "pyproject.toml": pyproject.replace("dependencies = []", 'dependencies = ["attrs>=23"]'),
        "pkg/model.py": "VERSION = 1\n"}})

    result = repo.run()

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert issue(repo.path, dep)["status"] == "closed"
    assert 'attrs>=23' in git(repo.path, "show", "main:pyproject.toml")
    body = git(repo.path, "log", "-1", "--format=%B", "main")
    assert "Gates: diff=pass tests=pass" in body and "Tests: tests collected=1 passed=1" in body


def _wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.1)


@pytest.mark.parametrize("person_does", [("close", "--reason", "done by hand"), ("update", "--assignee", "alice")])
def test_a_person_who_closes_or_takes_the_issue_mid_session_wins(tmp_path, person_does):
    repo = Repo(tmp_path)
    taken = repo.issue("Long work", {"sleep": 120, "write": {"pkg/long.py": "X = 1\n"}})
    runner = repo.start()
    try:
        _wait_for(lambda: any(s["issue"] == taken and s["event"] == "start" for s in repo.sessions()))
        run_bd(repo.path, person_does[0], taken, *person_does[1:], actor="alice")
        before = issue(repo.path, taken)
        out, _ = runner.communicate(timeout=90)  # far less than the 120 s session: it was stopped
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGKILL)
    assert runner.returncode == 0, out[-3000:]  # superseded is not a failure
    assert [s["event"] for s in repo.sessions() if s["issue"] == taken] == ["start"]  # the session was killed
    after = issue(repo.path, taken)
    assert after == before  # the person's state, exactly as set: not released, reopened or labelled
    assert "needs-human" not in (after.get("labels") or [])
    assert repo.comments(taken) == []
    assert not repo.landed()
    assert git(repo.path, "branch", "--list", f"beads-runner/{taken}").strip()  # the branch is kept
    status, outcome = repo.outcome(taken)
    assert status == "succeeded" and outcome["no_work"] and outcome["superseded"], outcome


def _cli(repo: Repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BEADS_RUNNER), "--repo", str(repo.path), *args], env=repo.env(), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_verify_reproves_landed_issues_and_reopens_what_no_longer_holds(tmp_path):
    repo = Repo(tmp_path)
    first = repo.issue("Add a", {"write": {"pkg/a.py": "A = 1\n"}})
    second = repo.issue("Add b", {"write": {"pkg/b.py": "B = 1\n"}})
    assert repo.run().returncode == 0

    ok = _cli(repo, "verify", "--gates", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    verdicts = {v["issue_id"]: v for v in json.loads(ok.stdout)}
    assert set(verdicts) == {first, second}
    assert all(v["ok"] and v["gates"] == "tests=pass" for v in verdicts.values())
    table = _cli(repo, "verify", first)
    assert table.returncode == 0 and first in table.stdout and "names it" in table.stdout

    # The target loses its newest landed commit (a force-push, say): that landing no longer holds.
    # (Only the ref moves: the bd database in the checkout is left alone.)
    lost = git(repo.path, "log", "-1", "--format=%(trailers:key=Beads-Issue,valueonly)", "main").strip()
    kept = first if lost == second else second
    git(repo.path, "update-ref", "refs/heads/main", "main~1")
    bad = _cli(repo, "verify", "--reopen")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "MISMATCH" in bad.stdout and "no commit with the trailer" in bad.stdout, bad.stdout
    assert issue(repo.path, lost)["status"] == "open"  # back in the queue ...
    assert any("cannot be proven" in c for c in repo.comments(lost))  # ... saying why
    assert issue(repo.path, kept)["status"] == "closed"  # what still holds is left alone
    assert repo.comments(kept) == []


def test_verify_gates_fail_at_a_commit_the_gates_no_longer_pass(tmp_path):
    repo = Repo(tmp_path)
    landed = repo.issue("Add a", {"write": {"pkg/a.py": "A = 1\n"}})
    assert repo.run().returncode == 0
    config = repo.path / ".beads-runner.toml"
    config.write_text(config.read_text().replace("-t . -q", "-t . -q -k no_such_test"))  # now it runs no test
    result = _cli(repo, "verify", landed, "--gates", "--json")
    assert result.returncode == 1
    (verdict,) = json.loads(result.stdout)
    assert verdict["gates"] == "tests=fail" and "the gates fail" in verdict["problems"][0]
    assert issue(repo.path, landed)["status"] == "closed"  # without --reopen nothing changes


CLOSE_THEN_TEST = textwrap.dedent("""\
    import subprocess, sys
    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True, text=True).stdout
    issue = branch.strip().split("/", 1)[1]
    common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], capture_output=True,
                            text=True).stdout.strip()
    # A person closes the issue (in the repository, not this worktree) while the gates run.
    subprocess.run(["bd", "close", issue, "--reason", "fixed by hand", "--actor", "alice"], check=True,
                   capture_output=True, cwd=common.rsplit("/.git", 1)[0])
    sys.exit(subprocess.run([sys.executable, "-m", "unittest", "discover", "-s", "tests", "-t", ".", "-q"]).returncode)
    """)


def test_a_person_who_closes_the_issue_after_the_session_before_landing_wins(tmp_path):
    repo = Repo(tmp_path, gate=f"{sys.executable} {tmp_path / 'close_then_test.py'}")
    (tmp_path / "close_then_test.py").write_text(CLOSE_THEN_TEST)
    # The gate plays the person, writing the tracker in the main checkout: exactly what the sandbox
    # forbids a gate. Off for this test only.
    config = repo.path / ".beads-runner.toml"
    config.write_text('sandbox = "off"\n' + config.read_text())
    git(repo.path, "commit", "-q", "-am", "sandbox off: the gate plays a person")
    repo.initial = git(repo.path, "rev-parse", "main").strip()
    taken = repo.issue("Quick work", {"write": {"pkg/quick.py": "X = 1\n"}})

    result = repo.run()

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    shown = issue(repo.path, taken)
    assert shown["status"] == "closed" and shown["close_reason"] == "fixed by hand"
    assert repo.comments(taken) == [] and not repo.landed()
    status, outcome = repo.outcome(taken)
    assert status == "succeeded" and outcome["superseded"] and "closed" in outcome["superseded"], outcome


def test_a_run_has_at_most_agent_max_attempts_sessions_across_step_retries(tmp_path):
    repo = Repo(tmp_path, agent="max_attempts = 2")  # the engine would retry the step 3 times
    crashing = repo.issue("Crashes every time", {"exit": 3, "write": {"pkg/c.py": "C = 1\n"}})

    result = repo.run()

    assert result.returncode == 1
    assert [s["event"] for s in repo.sessions() if s["issue"] == crashing] == ["start", "start"]
    assert any("used its agent.max_attempts (2) sessions" in c for c in repo.comments(crashing))
