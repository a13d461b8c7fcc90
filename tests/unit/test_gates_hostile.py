"""Diff gates against a hostile change (issue 17, items 2, 4 and 8, and the rules on symlinks, submodules
and binaries): what is checked is what git would commit, not what git's diff chooses to show."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from quality_gates import GateInput, diff_gates, run_suite
from quality_gates.diff import content_gate, protected_gate, secrets_gate, size_gate
from tests.unit.test_gates_helpers import branch_worktree, commit_all, make_repo, write

AWS_KEY_ID = "AKIA" + "Q3EGUV4ZW2XB7KDM"
# An AWS secret access key on its own (no key id beside it), assembled so this file holds none.
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYzq8Lk3Tp5Y"


@pytest.fixture
def wt(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "repo", {"src/app.py": "x = 1\n", "data/keep.txt": "kept\n"})
    return branch_worktree(repo)


def run(gate, wt: Path):
    return gate.run(GateInput(wt, target="main"))


@pytest.mark.parametrize("path", [".beads-runner.toml", "opencode.json", "opencode.jsonc", ".opencode/agent/x.md",
                                  ".gitattributes", "sub/.gitattributes"])
def test_the_runners_and_the_agents_configuration_never_land_on_their_own(wt: Path, path: str) -> None:
    write(wt, {path: "[[gates]]\nname = 'tests'\nrun = 'true'\n", "src/app.py": "x = 2\n"})
    report = run(protected_gate(), wt)
    assert report.status == "fail"
    assert path in report.reason and "only a person may land that" in report.reason


def test_an_aws_secret_access_key_alone_is_found(wt: Path) -> None:
    write(wt, {"src/app.py": f"x = 1\nSECRET = '{AWS_SECRET}'\n"})
    report = run(secrets_gate(), wt)
    assert report.status == "fail" and "src/app.py:2: AWS secret access key" in report.findings[0]
    write(wt, {"src/app.py": "x = 1\nNAME = 'ThisIsAVeryLongCamelCaseIdentifierName12'\n"
                             "SHA = '3b18e512dba79e4c8300dd08aeb37f8e728b8dad'\n"})
    assert run(secrets_gate(), wt).status == "pass"


def test_a_secret_in_a_new_file_over_2_mb_is_found(wt: Path) -> None:
    big = "filler line\n" * 250_000 + f"key = {AWS_KEY_ID}\n"  # 3 MB, the key at its end
    write(wt, {"big.txt": big})
    report = run(secrets_gate(), wt)
    assert report.status == "fail" and report.findings == [f"big.txt:250001: AWS access key id ({AWS_KEY_ID[:4]}…)"]


@pytest.mark.parametrize("tracked", [False, True], ids=["new", "modified"])
def test_a_secret_after_an_early_nul_byte_is_found(wt: Path, tracked: bool) -> None:
    if tracked:
        write(wt, {"blob.dat": "harmless\n"})
        commit_all(wt, "a file")
        subprocess.run(["git", "-C", str(wt), "update-ref", "refs/heads/main", "HEAD"], check=True)
    (wt / "blob.dat").write_bytes(b"\0\0header\n" + f"key = {AWS_KEY_ID}\n".encode())
    report = run(secrets_gate(), wt)
    assert report.status == "fail" and "AWS access key id" in report.findings[0]


def test_gitattributes_cannot_hide_a_secret_nor_lines_from_the_size_limit(wt: Path) -> None:
    lines = "".join(f"line {i}\n" for i in range(5000))
    write(wt, {".gitattributes": "*.txt -diff\nsrc/*.py binary\n", "data/keep.txt": lines,
               "src/app.py": f"x = 1\nKEY = '{AWS_KEY_ID}'\n"})
    commit_all(wt, "hidden")
    suite = run_suite(diff_gates(max_lines=50, target="main"), GateInput(wt, target="main"))
    by_name = {r.name: r for r in suite.reports}
    # keep.txt +5000 -1, .gitattributes +2, app.py +1: all counted although git calls them binary
    assert by_name["diff.size"].status == "fail" and "5004 lines changed" in by_name["diff.size"].findings[0]
    assert by_name["diff.secrets"].status == "fail" and "src/app.py:2" in by_name["diff.secrets"].findings[0]
    assert by_name["diff.protected"].status == "fail"  # and .gitattributes itself is protected


def test_bytes_count_as_well_as_lines(wt: Path) -> None:
    write(wt, {"one-line.txt": "x" * 100_000})
    report = run(size_gate(max_lines=50, max_bytes=10_000), wt)
    assert report.status == "fail" and "100000 bytes added; at most 10000 allowed" in report.findings


def test_symlinks_out_of_the_repository_submodules_and_binaries_are_for_a_person(wt: Path) -> None:
    os.symlink("/etc/passwd", wt / "passwd")
    os.symlink("../../../outside", wt / "src" / "escape")
    os.symlink("app.py", wt / "src" / "alias.py")  # inside: fine
    (wt / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0" + bytes(range(256)))
    nested = wt / "vendored"
    nested.mkdir()
    subprocess.run(["git", "init", "-q", str(nested)], check=True)
    (nested / "f").write_text("x")
    subprocess.run(["git", "-C", str(nested), "-c", "user.name=t", "-c", "user.email=t@t", "add", "f"], check=True)
    subprocess.run(["git", "-C", str(nested), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    report = run(content_gate(), wt)
    assert report.status == "fail"
    text = "\n".join(report.findings)
    assert "passwd: a symlink pointing outside the repository (/etc/passwd)" in text
    assert "src/escape: a symlink pointing outside" in text and "alias.py" not in text
    assert "vendored" in text and "submodule" in text
    assert "logo.png: binary content" in text
    assert "logo.png" not in "\n".join(run(content_gate(binary_allow=["*.png"]), wt).findings)


def test_reading_the_change_never_follows_a_symlink_to_a_fifo_or_dev_zero(wt: Path) -> None:
    os.mkfifo(wt.parent / "fifo")
    os.symlink(str(wt.parent / "fifo"), wt / "pipe")
    os.symlink("/dev/zero", wt / "zero")
    os.mkfifo(wt / "raw-fifo")
    done = threading.Event()
    result = {}

    def check() -> None:
        result["report"] = run_suite(diff_gates(max_lines=10, target="main"), GateInput(wt, target="main"))
        done.set()

    threading.Thread(target=check, daemon=True).start()
    assert done.wait(60), "reading the change hung on a FIFO"
    by_name = {r.name: r for r in result["report"].reports}
    assert by_name["diff.content"].status == "fail"
    assert "pipe: a symlink pointing outside" in "\n".join(by_name["diff.content"].findings)
    assert "zero: a symlink pointing outside" in "\n".join(by_name["diff.content"].findings)
    assert "raw-fifo" not in "\n".join(by_name["diff.content"].findings)  # git never commits a FIFO


def test_binary_byproducts_of_the_gates_are_not_refused(wt: Path) -> None:
    (wt / "src" / "__pycache__").mkdir()
    (wt / "src" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0\x01bytecode")
    (wt / ".coverage").write_bytes(b"SQLite format 3\0")
    write(wt, {"src/app.py": "x = 2\n"})
    assert run(content_gate(), wt).status == "pass"


def test_a_secret_in_a_changed_binary_file_is_found_without_reading_it_whole_into_a_patch(wt: Path) -> None:
    (wt / "blob.bin").write_bytes(b"\0old\n")
    commit_all(wt, "a binary")
    subprocess.run(["git", "-C", str(wt), "update-ref", "refs/heads/main", "HEAD"], check=True)
    (wt / "blob.bin").write_bytes(b"\0" * 10 + bytes(range(256)) * 4000 + f"\nkey = {AWS_KEY_ID}\n".encode())
    report = run(secrets_gate(), wt)
    assert report.status == "fail" and report.findings[0].startswith("blob.bin:")
