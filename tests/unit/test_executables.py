"""The one executable lookup (beads_runner/executables.py): bd, the agents, the gates, the sandbox."""

import os
from pathlib import Path

from beads_runner import executables


def _program(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


def test_a_bare_name_is_looked_up_on_the_given_path(tmp_path):
    tool = _program(tmp_path / "bin" / "mytool")
    assert executables.find("mytool", tmp_path / "elsewhere", path=str(tool.parent)) == str(tool)
    assert executables.find("mytool", tmp_path, path=str(tmp_path / "empty")) is None


def test_a_relative_path_is_under_the_base_not_the_current_directory(tmp_path):
    tool = _program(tmp_path / "repo" / "tools" / "bd")
    assert executables.find("tools/bd", tmp_path / "repo") == str(tool)
    assert executables.find("tools/bd", tmp_path) is None


def test_a_file_that_is_not_executable_is_not_found(tmp_path):
    _program(tmp_path / "script.sh", mode=0o644)
    assert executables.find("./script.sh", tmp_path) is None
    assert executables.as_path("./script.sh", tmp_path) == tmp_path / "script.sh"  # for the error message


def test_home_is_expanded_only_where_a_configuration_value_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    tool = _program(tmp_path / "bin" / "bd")
    assert executables.find("~/bin/bd", "/") == str(tool)
    # a gate's argv[0] runs without a shell: `~` is a directory name there
    assert executables.find("~/bin/bd", tmp_path / "repo", expand_user=False) is None
    assert executables.as_path("~/bin/bd", "/base", expand_user=False) == Path("/base/~/bin/bd")


def test_a_bare_name_is_no_path():
    assert executables.as_path("bd", "/repo") is None
    assert not executables.names_a_path("bd")
    assert executables.names_a_path(f"bin{os.sep}bd")
