"""The command line as a user meets it: clear errors for bad config and missing tools, init, dry-run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fakes.bd_standin import create_issue, make_beads_repo, standin_env

BEADS_RUNNER = Path(sys.executable).parent / "beads-runner"


def cli(repo: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BEADS_RUNNER), "--repo", str(repo), *args], capture_output=True, text=True,
                          env=env or standin_env(), timeout=120, stdin=subprocess.DEVNULL)


def git_repo(path: Path) -> Path:
    path.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "init"], check=True)
    return path


def test_malformed_config_names_the_file_the_key_and_what_is_allowed(tmp_path):
    repo = git_repo(tmp_path / "r")
    (repo / ".beads-runner.toml").write_text('[engine]\nmax_sessions = "three"\n[agent]\ntimeout = "-5m"\n'
                                             '[tracker]\nkindd = "bd"\n')
    result = cli(repo, "start", "--once")
    assert result.returncode == 2
    err = result.stderr
    assert ".beads-runner.toml is invalid" in err
    assert "engine.max_sessions" in err and "integer" in err
    assert "agent.timeout" in err and "-5m" in err
    assert "tracker.kindd: unknown key" in err
    assert "fix:" in err
    assert "Traceback" not in err


def test_invalid_toml_is_reported_with_its_location(tmp_path):
    repo = git_repo(tmp_path / "r")
    (repo / ".beads-runner.toml").write_text("[engine\nmax_sessions = 3\n")
    result = cli(repo, "status")
    assert result.returncode == 2
    assert "is not valid TOML" in result.stderr and "line 1" in result.stderr


def test_missing_bd_says_how_to_install_it(tmp_path):
    repo = git_repo(tmp_path / "r")
    (repo / ".beads-runner.toml").write_text('[tracker]\ncommand = "bd-does-not-exist"\n')
    result = cli(repo, "start", "--once")
    assert result.returncode == 2
    assert "bd-does-not-exist" in result.stderr
    assert "fix:" in result.stderr and "tracker.command" in result.stderr
    assert "Traceback" not in result.stderr


def test_unsafe_issue_id_is_refused_before_anything_runs(tmp_path):
    repo = git_repo(tmp_path / "r")
    result = cli(repo, "submit", "../../etc/passwd")
    assert result.returncode == 2
    assert "not safe as a git branch and directory name" in result.stderr


def test_init_writes_a_valid_commented_config_and_ignores_the_state_dir(tmp_path):
    repo = git_repo(tmp_path / "r")
    (repo / "tests").mkdir()
    result = cli(repo, "init")
    assert result.returncode == 0, result.stderr
    text = (repo / ".beads-runner.toml").read_text()
    assert "max_sessions = 3" in text and 'name = "tests"' in text and "#" in text
    assert ".beads-runner/" in (repo / ".gitignore").read_text().splitlines()
    again = cli(repo, "init")
    assert "left as it is" in again.stdout
    assert (repo / ".gitignore").read_text().count(".beads-runner/") == 1
    assert cli(repo, "doctor").stdout.count("[ok  ] config") == 1


def test_dry_run_shows_what_would_be_claimed_and_the_prompt_and_changes_nothing(tmp_path):
    repo = git_repo(tmp_path / "r")
    make_beads_repo(repo, prefix="dr")
    first = create_issue(repo, "First task", "-d", "Do the first thing", "-p", "1")
    create_issue(repo, "Blocked task", "--deps", first)
    before = (repo / ".beads" / "issues.jsonl").read_text()
    result = cli(repo, "start", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"[claim] {first}" in result.stdout
    assert "Blocked task" not in result.stdout
    assert "Do the first thing" in result.stdout  # the prompt
    assert (repo / ".beads" / "issues.jsonl").read_text() == before


def test_doctor_reports_each_problem_with_its_fix(tmp_path):
    repo = git_repo(tmp_path / "r")
    env = standin_env()
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if "bd-standin" not in p)
    (repo / ".beads-runner.toml").write_text('[tracker]\ncommand = "no-such-bd"\n[land]\ntarget = "trunk"\n')
    result = cli(repo, "doctor", env=env)
    assert result.returncode == 1
    assert "[FAIL] git" in result.stdout and "trunk" in result.stdout
    assert "[FAIL] tracker" in result.stdout and "no-such-bd" in result.stdout
    assert result.stdout.count("fix:") >= 2


def test_gates_command_runs_the_configured_gates_on_the_tree(tmp_path):
    repo = git_repo(tmp_path / "r")
    (repo / ".beads-runner.toml").write_text(
        f'[[gates]]\nname = "ok"\nrun = "{sys.executable} -c pass"\n'
        f'[[gates]]\nname = "bad"\nrun = "{sys.executable} -c \'raise SystemExit(3)\'"\n')
    result = cli(repo, "gates", "--json")
    assert result.returncode == 1, result.stderr
    report = __import__("json").loads(result.stdout)
    by_name = {r["name"]: r["status"] for r in report["reports"]}
    assert by_name["ok"] == "pass" and by_name["bad"] == "fail"
    human = cli(repo, "gates")
    assert "FAIL" in human.stdout and "bad" in human.stdout
