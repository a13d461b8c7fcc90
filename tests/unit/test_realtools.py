"""The rule for real tools built by `make tools`: present, used; missing, skipped with how to get
it; missing in CI, a failure (a CI run must never pass by skipping the real thing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import realtools


@pytest.fixture
def tool(tmp_path: Path) -> Path:
    path = tmp_path / "bd"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_a_present_tool_is_returned(tool: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CI", "true")
    assert realtools.require_tool(tool, "make tools") == tool


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_a_missing_tool_skips_with_one_line_saying_how_to_get_it(tmp_path: Path, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception) as caught:
        realtools.require_tool(tmp_path / "bd", "run `make tools` (needs Go)")
    assert str(caught.value) == f"{tmp_path / 'bd'} is missing: run `make tools` (needs Go)"


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_a_missing_tool_fails_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception) as caught:
        realtools.require_tool(tmp_path / "bd", "run `make tools` (needs Go)")
    assert "is missing: run `make tools` (needs Go)" in str(caught.value)


def test_a_file_that_is_not_executable_counts_as_missing(tool: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CI", raising=False)
    tool.chmod(0o644)
    with pytest.raises(pytest.skip.Exception):
        realtools.require_tool(tool, "make tools")


def test_beads_runner_bd_overrides_where_the_real_bd_is(tool: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BEADS_RUNNER_BD", str(tool))
    assert realtools.require_real_bd() == tool
    monkeypatch.delenv("BEADS_RUNNER_BD")
    assert realtools.bd_path() == realtools.ROOT / ".tools" / "bin" / "bd"
