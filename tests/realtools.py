"""The real tools `make tools` builds (bd, the Hatchet engine): found, or skipped with one line.

Where they are missing, their tests skip with a line saying how to get them; in CI (CI=true) a
missing tool fails the test instead, because CI runs `make tools` first and must test the real thing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = ROOT / ".tools" / "bin"
HOW = "run `make tools` (needs Go >= 1.26 and gcc)"


def require_tool(path: Path, what: str) -> Path:
    if path.is_file() and os.access(path, os.X_OK):
        return path
    message = f"{what} not found at {path}: {HOW}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)
