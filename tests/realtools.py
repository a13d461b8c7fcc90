"""The real tools built from their Go modules by `make tools` (bd, the Hatchet engine), and the one
rule for when one is missing: skip with a line saying how to get it, except in CI, where a missing
tool fails the test (a CI run that silently skipped the real thing would prove nothing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = ROOT / ".tools" / "bin"
BD_HOW = "run `make tools` (needs Go and gcc), or set BEADS_RUNNER_BD to a bd v1.0.5 executable"


def in_ci() -> bool:
    """CI=true (what GitHub, GitLab and most CI systems set), also CI=1."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_tool(path: Path, how: str) -> Path:
    """`path` if it is an executable file; else skip the test with one line, or fail it in CI."""
    path = Path(path)
    if path.is_file() and os.access(path, os.X_OK):
        return path
    message = f"{path} is missing: {how}"
    if in_ci():
        pytest.fail(f"{message} (CI is set, so a missing tool fails instead of skipping)", pytrace=False)
    pytest.skip(message)


def bd_path() -> Path:
    """Where the real bd is expected: $BEADS_RUNNER_BD, else `.tools/bin/bd` in the repository."""
    configured = os.environ.get("BEADS_RUNNER_BD", "").strip()
    return Path(configured).expanduser() if configured else TOOLS_BIN / "bd"


def require_real_bd() -> Path:
    """The real bd executable, or skip/fail by `require_tool`'s rule."""
    return require_tool(bd_path(), BD_HOW)
