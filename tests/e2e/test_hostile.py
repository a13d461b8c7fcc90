"""A hostile agent or repository (issue 17): what the agent's change and the agent's own processes can
reach, tried for real with `beads-runner start --once`, real git, bubblewrap and the bd stand-in. The
agent is the `command` kind: a Python script that does what a prompt-injected agent would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.e2e.conftest import BEADS_RUNNER, git, issue
from tests.helpers import processes_with
from tests.fakes.bd_standin import bd_json, create_issue, make_beads_repo, standin_env


def needs_bwrap() -> None:
    """bubblewrap is part of the project's setup: in CI its absence is a failure, not a skip."""
    if shutil.which("bwrap") is None:
        if os.environ.get("CI"):
            pytest.fail("bubblewrap (bwrap) is not installed; `make setup` installs it (apt-get install bubblewrap)")
        pytest.skip("bubblewrap (bwrap) is not installed")


class Hostile:
    """A repository whose agent runs `body` (Python) in its worktree, then writes `work.txt` there."""

    def __init__(self, tmp: Path, body: str, *, sandbox: str = "auto", extra: str = ""):
        self.tmp = tmp
        self.repo = tmp / "repo"
        self.repo.mkdir()
        git(self.repo, "init", "-q", "-b", "main")
        git(self.repo, "config", "user.name", "T")
        git(self.repo, "config", "user.email", "t@example.com")
        (self.repo / ".gitignore").write_text(".beads-runner/\n")
        make_beads_repo(self.repo, prefix="hx")
        (tmp / "agent.py").write_text(textwrap.dedent("""\
            import os, subprocess, sys
            from pathlib import Path
            REPO = Path(os.environ["HOSTILE_REPO"])
            OUT = Path(os.environ["HOSTILE_OUT"])
            sys.stdin.read()
            def attempt(name, fn):
                try:
                    fn()
                    print(f"{name}: done", flush=True)
                except OSError as exc:
                    print(f"{name}: refused ({exc.strerror})", flush=True)
            """) + textwrap.dedent(body) + '\nPath("work.txt").write_text("the work\\n")\n')
        (self.repo / ".beads-runner.toml").write_text(textwrap.dedent(f"""\
            sandbox = "{sandbox}"
            [tracker]
            poll_interval = "1s"
            [agent]
            kind = "command"
            command = "{sys.executable} {tmp / 'agent.py'}"
            timeout = "60s"
            [engine.retry]
            backoff = "0.2s"
            """) + extra)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", "initial")
        self.out = tmp / "out"
        self.out.mkdir()

    def run(self, timeout: float = 180) -> subprocess.CompletedProcess:
        env = standin_env(HOSTILE_REPO=str(self.repo), HOSTILE_OUT=str(self.out))
        return subprocess.run([str(BEADS_RUNNER), "--repo", str(self.repo), "start", "--once"], env=env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def agent_log(self) -> str:
        return "".join(p.read_text() for p in (self.repo / ".beads-runner" / "runs").rglob("agent-*.ndjson"))


HOOK = textwrap.dedent("""\
    #!/bin/sh
    touch "{marker}"
    """)


def test_a_sandboxed_agent_cannot_write_the_main_checkout_nor_plant_a_hook_and_nothing_it_starts_outlives_it(tmp_path):
    needs_bwrap()
    marker = tmp_path / "HOOK_RAN"
    rig = Hostile(tmp_path, f"""\
        hook = REPO / ".git" / "hooks" / "post-merge"
        attempt("main checkout", lambda: (REPO / "owned.txt").write_text("pwned"))
        attempt("hook", lambda: (hook.write_text({HOOK.format(marker=marker)!r}), hook.chmod(0o755)))
        attempt("tracker", lambda: (REPO / ".beads" / "issues.jsonl").write_text(""))
        attempt("runner state", lambda: (REPO / ".beads-runner" / "planted").write_text("x"))
        attempt("worktree .git", lambda: Path(".git").write_text("gitdir: /nowhere\\n"))
        attempt("outside", lambda: (OUT / "escaped").write_text("x"))
        attempt("private tmp", lambda: Path("/tmp/agent-scratch").write_text("x"))
        subprocess.Popen(["setsid", "sleep", "477.25"])  # leaves its session: must still die with the agent
        """)
    issue_id = create_issue(rig.repo, "Do the work")
    result = rig.run()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = rig.agent_log()
    for what in ("main checkout", "hook", "tracker", "runner state", "worktree .git"):
        assert f"{what}: refused (Read-only file system)" in log, log
    assert "outside: refused" in log  # the rest of /tmp is not even visible
    assert "private tmp: done" in log
    assert not (rig.repo / "owned.txt").exists() and not (rig.repo / ".git" / "hooks" / "post-merge").exists()
    assert not (rig.out / "escaped").exists() and not Path("/tmp/agent-scratch").exists()
    assert (rig.repo / ".beads" / "issues.jsonl").stat().st_size > 0
    assert issue(rig.repo, issue_id)["status"] == "closed"
    assert (rig.repo / "work.txt").read_text() == "the work\n"  # landed, through the runner's own git
    assert not marker.exists()
    assert not _processes_with("477.25")


def test_the_runners_git_never_runs_a_repository_hook_even_unsandboxed(tmp_path):
    marker = tmp_path / "HOOK_RAN"
    rig = Hostile(tmp_path, f"""\
        for name in ("post-merge", "post-commit", "pre-commit", "commit-msg", "post-checkout",
                     "reference-transaction", "post-rewrite", "pre-rebase"):
            hook = REPO / ".git" / "hooks" / name
            attempt(name, lambda: (hook.write_text({HOOK.format(marker=marker)!r}), hook.chmod(0o755)))
        """, sandbox="off")
    issue_id = create_issue(rig.repo, "Do the work")
    result = rig.run()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "post-merge: done" in rig.agent_log()  # unconfined, the agent could plant it ...
    assert issue(rig.repo, issue_id)["status"] == "closed"
    assert not marker.exists()  # ... and the landing still ran none of them


def test_start_refuses_when_no_sandbox_can_work_unless_the_user_chose_off(tmp_path):
    rig = Hostile(tmp_path, "")
    create_issue(rig.repo, "Do the work")
    # A PATH with git, python and the bd stand-in, and no bwrap.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("git", "sh", "env"):
        os.symlink(shutil.which(tool), bindir / tool)
    env = standin_env(HOSTILE_REPO=str(rig.repo), HOSTILE_OUT=str(rig.out))
    env["PATH"] = os.pathsep.join([env["PATH"].split(os.pathsep)[0], str(bindir), str(Path(sys.executable).parent)])
    argv = [str(BEADS_RUNNER), "--repo", str(rig.repo), "start", "--once"]
    refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2
    assert "error: " in refused.stderr and "bubblewrap" in refused.stderr and 'sandbox = "off"' in refused.stderr
    assert bd_json(rig.repo, "list", "--status", "in_progress") == []  # nothing was claimed
    doctor = subprocess.run([str(BEADS_RUNNER), "--repo", str(rig.repo), "doctor"], env=env, capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert "[FAIL] sandbox" in doctor.stdout
    config = rig.repo / ".beads-runner.toml"
    config.write_text(config.read_text().replace('sandbox = "auto"', 'sandbox = "off"'))
    doctor = subprocess.run([str(BEADS_RUNNER), "--repo", str(rig.repo), "doctor"], env=env, capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert "sandbox  off: agents and gates run unconfined" in doctor.stdout


def _processes_with(marker: str) -> list[int]:
    return processes_with(marker, wait=5)  # the pid namespace is torn down as the sandbox exits



def test_issues_whose_ids_look_like_flags_are_refused_with_a_comment_and_handed_to_a_person(tmp_path):
    rig = Hostile(tmp_path, "", sandbox="off")
    ids = {create_issue(rig.repo, "Dash"): "-", create_issue(rig.repo, "Help"): "--help"}
    store = rig.repo / ".beads" / "issues.jsonl"
    text = store.read_text()
    for old, new in ids.items():
        text = text.replace(f'"id": "{old}"', f'"id": "{new}"').replace(f'"id":"{old}"', f'"id":"{new}"')
    store.write_text(text)
    assert all(f'"{new}"' in text for new in ids.values())
    result = rig.run()
    assert "Traceback" not in result.stderr
    for bad in ids.values():
        shown = json.loads(subprocess.run(
            [sys.executable, "-S", str(Path(__file__).parents[1] / "fakes" / "bd"), "show", "--json", "--", bad],
            cwd=rig.repo, capture_output=True, text=True, env=standin_env(), check=True).stdout)
        shown = shown[0] if isinstance(shown, list) else shown
        assert shown["status"] == "blocked" and "needs-human" in shown.get("labels", []), shown
        comments = json.loads(subprocess.run(
            [sys.executable, "-S", str(Path(__file__).parents[1] / "fakes" / "bd"), "comments", "--json", "--", bad],
            cwd=rig.repo, capture_output=True, text=True, env=standin_env(), check=True).stdout)
        assert any("refused this issue" in c["text"] and "not safe" in c["text"] for c in comments), comments


def test_start_once_exits_non_zero_when_every_bd_call_fails(tmp_path):
    rig = Hostile(tmp_path, "", sandbox="off")
    create_issue(rig.repo, "Never seen")
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps([{"command": c, "kind": "error_json_stderr", "message": "database is gone",
                                   "times": 1000} for c in ("ready", "list", "show", "update")]))
    env = standin_env(HOSTILE_REPO=str(rig.repo), HOSTILE_OUT=str(rig.out), BD_STANDIN_FAULTS=str(faults))
    result = subprocess.run([str(BEADS_RUNNER), "--repo", str(rig.repo), "start", "--once", "--poll-interval", "0.2"],
                            env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "the tracker failed on every try" in result.stderr


def test_a_gate_command_that_does_not_exist_stops_start_before_any_claim(tmp_path):
    rig = Hostile(tmp_path, "", sandbox="off", extra='[[gates]]\nname = "lint"\nrun = "no-such-linter --strict"\n')
    issue_id = create_issue(rig.repo, "Never claimed")
    result = rig.run()
    assert result.returncode == 2
    assert "error: gate command not found: lint: no-such-linter" in result.stderr and "fix:" in result.stderr
    assert issue(rig.repo, issue_id)["status"] == "open"  # nothing was claimed, no agent was blamed
    doctor = subprocess.run([str(BEADS_RUNNER), "--repo", str(rig.repo), "doctor"], env=standin_env(),
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert "[FAIL] gates" in doctor.stdout and "lint: no-such-linter" in doctor.stdout


def test_real_opencode_with_bash_allowed_cannot_write_the_main_checkout_nor_plant_a_hook(tmp_path, runner_env):
    """The red-team's case as it happened: opencode, `bash: allow`, a shell tool call aimed at the
    main checkout and its .git/hooks. Confined, the call fails and the landing runs no hook."""
    needs_bwrap()
    from tests.e2e.conftest import run_cli, sample_repo, writes

    repo = sample_repo(tmp_path / "repo")
    marker = tmp_path / "HOOK_RAN"
    the_issue = create_issue(repo, "Add x")
    hook = repo / ".git" / "hooks" / "post-merge"
    # Hex, so that opencode's own check of the paths a command names does not see them (an agent
    # that wants out will not name them plainly either).
    targets = ((str(repo / "owned.txt"), "pwned"), (str(hook), f"#!/bin/sh\ntouch {marker}\n"))
    plan = (f"from pathlib import Path\n"
            f"for path, text in {targets!r}:\n"
            f"    try:\n        Path(path).write_text(text); Path(path).chmod(0o755); print('wrote', path)\n"
            f"    except OSError as exc:\n        print('refused', path, exc.strerror)\n")
    command = f"{sys.executable} -c \"exec(bytes.fromhex('{plan.encode().hex()}').decode())\""
    rounds = [[{"text": "Setting up.", "tools": [{"name": "bash", "args": {"command": command,
                                                                         "description": "plant a hook"}}]},
               *writes(("pkg/x.py", "X = 1\n"), summary="Added pkg/x.py.")[0]]]
    env, _server = runner_env({"scenarios": [{"match": f"Issue {the_issue} ", "rounds": rounds}]})
    result = run_cli(repo, env, "start", "--once")
    assert result.returncode == 0, result.stderr[-3000:]
    assert issue(repo, the_issue)["status"] == "closed"
    assert git(repo, "show", "main:pkg/x.py") == "X = 1\n"
    assert not (repo / "owned.txt").exists() and not hook.exists() and not marker.exists()
    log = "".join(p.read_text() for p in (repo / ".beads-runner" / "runs").rglob("agent-*.ndjson"))
    assert f"refused {repo / 'owned.txt'} Read-only file system" in log  # the command ran, confined
    assert f"refused {hook} Read-only file system" in log


def test_a_change_to_the_runners_or_the_agents_configuration_goes_to_a_person(tmp_path):
    rig = Hostile(tmp_path, """\
        Path(".beads-runner.toml").write_text('[[gates]]\\nname = "tests"\\nrun = "true"\\n')
        Path("opencode.json").write_text('{"permission": {"bash": "allow"}}')
        """)
    issue_id = create_issue(rig.repo, "Loosen the gates")
    config_before = (rig.repo / ".beads-runner.toml").read_text()
    result = rig.run()
    assert result.returncode == 1  # the run failed: to a person
    shown = issue(rig.repo, issue_id)
    assert shown["status"] == "blocked" and "needs-human" in shown.get("labels", [])
    comment = "\n".join(c["text"] for c in bd_json(rig.repo, "comments", issue_id))
    assert "diff.protected" in comment and ".beads-runner.toml" in comment and "opencode.json" in comment
    assert "only a person may land that" in comment
    assert (rig.repo / ".beads-runner.toml").read_text() == config_before
    assert not (rig.repo / "opencode.json").exists()
