"""Small things many tests need: git as a subprocess, and a fresh repository with an identity."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` (failing the test on error); its output, stripped."""
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def new_repo(path: Path, *, branch: str = "main") -> Path:
    """`git init` at `path` (created), with a committer identity; nothing committed yet."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    git(path, "config", "user.name", "Test User")
    git(path, "config", "user.email", "test@example.com")
    return path
