"""Diff gates on real git worktrees: empty change, size limits, forbidden paths, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from quality_gates import GateInput, diff_gates, run_suite
from quality_gates.diff import nonempty_gate, paths_gate, secrets_gate, size_gate
from tests.unit.test_gates_helpers import branch_worktree, commit_all, git, make_repo, write

# Secret-looking strings are assembled at run time, so this file itself holds none.
AWS_KEY = "AKIA" + "Q3EGUV4ZW2XB7KDM"
GITHUB_TOKEN = "ghp" + "_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GITHUB_PAT = "github" + "_pat_" + "11ABCDEFG0" + "x" * 50
SLACK_TOKEN = "xox" + "b-1234567890-abcdefghijk"
PRIVATE_KEY = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
OPENSSH_KEY = "-----BEGIN " + "OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"


@pytest.fixture
def wt(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "repo", {"src/app.py": "".join(f"line{i} = {i}\n" for i in range(20)),
                                         ".beads/issues.jsonl": "{}\n"})
    return branch_worktree(repo)


def run(gate, wt: Path):
    return gate.run(GateInput(wt, target="main"))


def test_empty_change_fails_and_any_change_passes(wt: Path) -> None:
    r = run(nonempty_gate(), wt)
    assert r.status == "fail" and "empty" in r.reason
    write(wt, {"notes.txt": "untracked counts\n"})
    assert run(nonempty_gate(), wt).status == "pass"


def test_committed_work_counts_as_change(wt: Path) -> None:
    write(wt, {"src/app.py": "changed = True\n"})
    commit_all(wt, "agent committed on its own")
    assert run(nonempty_gate(), wt).status == "pass"


def test_a_change_only_under_forbidden_paths_is_empty(wt: Path) -> None:
    write(wt, {".beads/issues.jsonl": '{"id": "x"}\n'})
    assert run(nonempty_gate(), wt).status == "fail"


def test_forbidden_paths_default_and_user_added(wt: Path) -> None:
    write(wt, {"src/app.py": "ok = 1\n"})
    assert run(paths_gate(), wt).status == "pass"
    write(wt, {".beads/issues.jsonl": '{"id": "tampered"}\n'})
    r = run(paths_gate(), wt)
    assert r.status == "fail" and r.findings == [".beads/issues.jsonl (changed)"]
    write(wt, {".github/workflows/ci.yml": "on: push\n"})
    gates = diff_gates(forbidden=[".github/workflows/**"], target="main")
    paths = next(g for g in gates if g.name == "diff.paths")
    r = paths.run(GateInput(wt, target="main"))
    assert r.status == "fail"
    assert r.findings == [".beads/issues.jsonl (changed)", ".github/workflows/ci.yml (changed)"]


def test_deleting_a_forbidden_file_is_reported(wt: Path) -> None:
    git(wt, "rm", "-q", ".beads/issues.jsonl")
    r = run(paths_gate(), wt)
    assert r.status == "fail" and r.findings == [".beads/issues.jsonl (deleted)"]


def test_line_and_file_limits(wt: Path) -> None:
    write(wt, {"src/app.py": "".join(f"line{i} = {i + 100}\n" for i in range(5)) +
               "".join(f"line{i} = {i}\n" for i in range(5, 20)),  # 5 lines replaced: +5 -5
               "src/new.py": "a = 1\nb = 2\n"})  # untracked: +2
    assert run(size_gate(max_lines=12, max_files=2), wt).status == "pass"
    r = run(size_gate(max_lines=11), wt)
    assert r.status == "fail" and "12 lines changed; at most 11 allowed" in r.findings
    assert "2 file(s), 12 line(s)" in r.reason
    r = run(size_gate(max_files=1), wt)
    assert r.status == "fail" and "2 files changed; at most 1 allowed" in r.findings
    assert run(size_gate(max_files=1, ignore=["src/new.py"]), wt).status == "pass"


def test_size_ignores_forbidden_paths(wt: Path) -> None:
    write(wt, {".beads/issues.jsonl": "{}\n" * 500, "a.txt": "a\n"})
    assert run(size_gate(max_lines=5), wt).status == "pass"


def test_binary_files_count_as_files(wt: Path) -> None:
    (wt / "logo.png").write_bytes(b"\x89PNG\0\0\0" + bytes(range(256)))
    r = run(size_gate(max_files=1, max_lines=1), wt)
    assert r.status == "pass" and "1 file(s), 0 line(s)" in r.reason


@pytest.mark.parametrize("name, text, kind", [
    ("deploy/key.pem", PRIVATE_KEY, "private key"),
    ("id_thing", OPENSSH_KEY, "private key"),
    ("src/settings.py", f'AWS_ACCESS_KEY_ID = "{AWS_KEY}"\n', "AWS access key id"),
    ("src/gh.py", f"TOKEN = '{GITHUB_TOKEN}'\n", "GitHub token"),
    ("src/gh2.py", f"TOKEN = '{GITHUB_PAT}'\n", "GitHub fine-grained token"),
    ("config/slack.yml", f"token: {SLACK_TOKEN}\n", "Slack token"),
])
def test_secret_content_is_detected_and_redacted(wt: Path, name: str, text: str, kind: str) -> None:
    write(wt, {name: "# harmless first line\n" + text})
    r = run(secrets_gate(), wt)
    assert r.status == "fail", r
    assert len(r.findings) == 1 and r.findings[0].startswith(f"{name}:2: {kind}")
    for secret in (AWS_KEY, GITHUB_TOKEN, GITHUB_PAT, SLACK_TOKEN):
        assert secret not in r.model_dump_json()  # reports never carry the secret itself


def test_secret_added_to_a_tracked_file_is_found_with_its_line(wt: Path) -> None:
    text = (wt / "src/app.py").read_text().replace("line7 = 7\n", f"line7 = '{AWS_KEY}'\n")
    write(wt, {"src/app.py": text})
    commit_all(wt, "agent commit")
    r = run(secrets_gate(), wt)
    assert r.findings == ["src/app.py:8: AWS access key id (AKIA…)"]


@pytest.mark.parametrize("name", [".env", "app/.env.production"])
def test_env_files_are_secrets(wt: Path, name: str) -> None:
    write(wt, {name: "DEBUG=1\n"})
    r = run(secrets_gate(), wt)
    assert r.status == "fail" and r.findings == [f"{name}: an environment file"]


def test_no_false_positive_on_ordinary_code(wt: Path) -> None:
    write(wt, {
        ".env.example": "API_TOKEN=changeme\n",
        "src/auth.py": (
            "import os\n"
            "TOKEN = os.environ['GITHUB_TOKEN']  # ghp_ tokens come from the environment\n"
            "AWS_KEY_ID = 'AKIAIOSFODNN7EXAMPLE'  # the documented example id\n"
            "HEADER = '-----BEGIN PUBLIC KEY-----'\n"
            "PATTERN = r'-----BEGIN [A-Z ]*PRIVATE KEY-----'\n"
            "slack_channel = 'xoxo-team'\n"
            "password = input('password: ')\n"
            "key_id = 'AKIA' + suffix\n"
        ),
        "docs/keys.md": "Keep your private key in ~/.ssh/id_ed25519, never in the repository.\n",
    })
    r = run(secrets_gate(), wt)
    assert r.status == "pass", r.findings


def test_removed_secret_is_not_reported_and_allow_list_works(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"old.cfg": f"key={AWS_KEY}\n"})
    wt = branch_worktree(repo)
    write(wt, {"old.cfg": "key=from-vault\n"})
    assert run(secrets_gate(), wt).status == "pass"
    write(wt, {"tests/fixtures/fake.pem": PRIVATE_KEY})
    assert run(secrets_gate(), wt).status == "fail"
    assert run(secrets_gate(allow=["tests/fixtures/**"]), wt).status == "pass"


def test_unknown_target_is_an_error(wt: Path) -> None:
    r = nonempty_gate().run(GateInput(wt, target="no-such-branch"))
    assert r.status == "error" and "no-such-branch" in r.reason
    r = nonempty_gate().run(GateInput(wt))
    assert r.status == "error" and "no target" in r.reason


def test_diff_gates_in_a_suite(wt: Path) -> None:
    write(wt, {"src/app.py": "x = 1\n"})
    report = run_suite(diff_gates(max_lines=100, target="main"), wt)
    assert report.trailer() == "diff=pass"
    assert [r.name for r in report.reports] == ["diff.nonempty", "diff.paths", "diff.protected", "diff.content",
                                                "diff.size", "diff.secrets"]
    assert report.passed


def test_trailer_folds_diff_gates_into_their_worst_status(wt: Path) -> None:
    write(wt, {".beads/issues.jsonl": "tampered\n", "a.py": "x = 1\n"})
    report = run_suite(diff_gates(target="main"), wt)
    assert report.trailer() == "diff=fail" and not report.passed
    assert [r.status for r in report.reports] == ["pass", "fail", "pass", "pass", "pass"]
