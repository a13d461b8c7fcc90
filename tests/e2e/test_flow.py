"""The whole flow, as a user runs it: `beads-runner start --once` on a bd repository, with real git,
the real opencode binary, the scripted model and the bd stand-in as real subprocesses."""

from __future__ import annotations

import re

from tests.e2e.conftest import (
    create_issue, git, issue, max_overlap, run_cli, sample_repo, session_intervals, writes,
)


def test_four_issues_land_in_dependency_order_with_trailers_and_close_reasons(tmp_path, runner_env):
    repo = sample_repo(tmp_path / "repo", max_sessions=3)
    a = create_issue(repo, "Add alpha", "-d", "Create pkg/alpha.py", "-p", "2")
    b = create_issue(repo, "Add beta on top of alpha", "-d", "pkg/beta.py uses alpha", "-p", "0", "--deps", a)
    c = create_issue(repo, "Add gamma", "-p", "2")
    d = create_issue(repo, "Add delta", "-p", "2")
    script = {"scenarios": [
        {"match": f"Issue {a} ", "rounds": writes(("pkg/alpha.py", "ALPHA = 1\n"),
                                                  ("tests/test_alpha.py", _test("pkg.alpha", "ALPHA", 1)),
                                                  summary="Added alpha.")},
        {"match": f"Issue {b} ", "rounds": writes(("pkg/beta.py", "from pkg.alpha import ALPHA\nBETA = ALPHA + 1\n"),
                                                  ("tests/test_beta.py", _test("pkg.beta", "BETA", 2)),
                                                  summary="Added beta.")},
        {"match": f"Issue {c} ", "rounds": writes(("pkg/gamma.py", "GAMMA = 3\n"), summary="Added gamma.")},
        {"match": f"Issue {d} ", "rounds": writes(("pkg/delta.py", "DELTA = 4\n"), summary="Added delta.")},
    ]}
    env, server = runner_env(script)

    result = run_cli(repo, env, "start", "--once")

    assert result.returncode == 0, result.stderr[-3000:]
    log = git(repo, "log", "main", "--format=%H %s")
    commits = [line.split(" ", 1) for line in log.splitlines()]
    assert len(commits) == 5  # four issues, one commit each, on the initial commit
    by_issue = {}
    for sha, subject in commits[:-1]:
        m = re.search(r"\((tt-[^)]+)\)$", subject)
        assert m, subject
        by_issue[m.group(1)] = sha
    assert set(by_issue) == {a, b, c, d}
    # b depends on a: a's commit is an ancestor of b's
    assert git(repo, "merge-base", "--is-ancestor", by_issue[a], by_issue[b]) == ""
    for issue_id, sha in by_issue.items():
        body = git(repo, "show", "-s", "--format=%B", sha)
        assert f"Beads-Issue: {issue_id}\n" in body
        assert re.search(r"^Beads-Run: run-\S+$", body, re.M)
        assert "Agent: opencode scripted/scripted\n" in body
        assert "Gates: diff=pass tests=pass\n" in body
        shown = issue(repo, issue_id)
        assert shown["status"] == "closed"
        assert shown["close_reason"] == f"Landed {sha[:8]} on main (gates: diff=pass tests=pass)"
    # the agent's work is there and the worktrees are gone
    assert (repo / "pkg" / "beta.py").exists() or git(repo, "show", "main:pkg/beta.py")
    assert not list((repo / ".beads-runner" / "worktrees").iterdir())
    # sessions overlapped, never beyond the cap
    overlap = max_overlap(session_intervals(repo))
    assert 2 <= overlap <= 3
    assert server.stats()["max_in_flight"] <= 3


def test_a_failing_gate_leaves_the_issue_blocked_with_a_comment_and_its_branch(tmp_path, runner_env):
    repo = sample_repo(tmp_path / "repo")
    bad = create_issue(repo, "Add broken thing")
    script = {"scenarios": [{"match": f"Issue {bad} ", "rounds": writes(
        ("pkg/broken.py", "VALUE = 41\n"), ("tests/test_broken.py", _test("pkg.broken", "VALUE", 42)))}]}
    env, _ = runner_env(script)

    result = run_cli(repo, env, "start", "--once")

    assert result.returncode == 1
    shown = issue(repo, bad)
    assert shown["status"] == "blocked"
    assert "needs-human" in shown["labels"]
    comments = [c["text"] for c in _comments(repo, bad)]
    # three sessions (the first and two fixes given the report), then a person gets it with the last report
    assert any("failed at step process" in t and "quality gates still fail after 3 session(s)" in t
               and "AssertionError: 41 != 42" in t for t in comments), comments
    assert git(repo, "branch", "--list", f"beads-runner/{bad}").strip()
    worktree = repo / ".beads-runner" / "worktrees" / bad
    assert (worktree / "pkg" / "broken.py").read_text() == "VALUE = 41\n"  # the work is kept
    assert len(git(repo, "log", "main", "--format=%H").split()) == 1  # nothing landed


def _comments(repo, issue_id):
    from tests.fakes.bd_standin import bd_json

    return bd_json(repo, "comments", issue_id)


def _test(module: str, name: str, value: int) -> str:
    return (f"import unittest\n\nfrom {module} import {name}\n\n\nclass T(unittest.TestCase):\n"
            f"    def test_value(self):\n        self.assertEqual({name}, {value})\n")


def test_the_fix_loop_feeds_the_gate_report_to_the_same_session_which_fixes_it(tmp_path, runner_env):
    repo = sample_repo(tmp_path / "repo")
    fixme = create_issue(repo, "Add the answer")
    test_file = ("tests/test_answer.py", _test("pkg.answer", "ANSWER", 42))
    script = {"scenarios": [{"match": f"Issue {fixme} ", "rounds": [
        # round 1: the first session gets it wrong
        [{"text": "Writing.", "tools": [{"name": "write", "args": {"filePath": "pkg/answer.py",
                                                                    "content": "ANSWER = 41\n"}}]},
         {"text": "Added the answer."}],
        # round 2: the same session, given the gate report, fixes it
        [{"text": "Fixing.", "tools": [{"name": "write", "args": {"filePath": "pkg/answer.py",
                                                                   "content": "ANSWER = 42\n"}}]},
         {"text": "Fixed the answer to 42 after the test failure."}],
    ]}]}
    script["scenarios"][0]["rounds"][0][0]["tools"].append(
        {"name": "write", "args": {"filePath": test_file[0], "content": test_file[1]}})
    env, server = runner_env(script)

    result = run_cli(repo, env, "start", "--once")

    assert result.returncode == 0, result.stderr[-3000:]
    shown = issue(repo, fixme)
    assert shown["status"] == "closed"
    commits = git(repo, "log", "main", "--format=%H", f"--grep=Beads-Issue: {fixme}").split()
    assert len(commits) == 1
    assert git(repo, "show", "main:pkg/answer.py") == "ANSWER = 42\n"
    # the second user message of the one conversation carried the gate report
    fixes = [b for b in server.request_log if sum(1 for m in b.get("messages", []) if m.get("role") == "user") >= 2]
    assert fixes
    second_user = [m for m in fixes[-1]["messages"] if m.get("role") == "user"][1]
    text = str(second_user.get("content"))
    assert "quality gates" in text and "AssertionError: 41 != 42" in text
    assert "Fixed the answer to 42" in git(repo, "show", "-s", "--format=%B", commits[0])
