"""Helpers for tests that run the `bd` stand-in (tests/fakes/bd) as a real subprocess."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FAKES = Path(__file__).resolve().parent


def standin_path() -> Path:
    """The stand-in executable (`tests/fakes/bd`)."""
    return FAKES / "bd"


@functools.cache
def fast_bin_dir() -> Path:
    """A directory holding a `bd` that runs the stand-in with this Python, without `site`.

    The stand-in's own shebang (`/usr/bin/env python3`) works too, but through a pyenv shim each
    call costs several times as much; tests make hundreds of calls."""
    directory = Path(tempfile.mkdtemp(prefix="bd-standin-"))
    atexit.register(shutil.rmtree, directory, True)
    wrapper = directory / "bd"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{standin_path()}" "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    return directory


def standin_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """An environment with the stand-in first on PATH, plus `extra` (BD_STANDIN_* knobs...)."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{fast_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    env.pop("BEADS_DIR", None)
    env.update(extra)
    return env


def put_bd_on_path(monkeypatch: Any) -> Path:
    """Make `bd` resolve to the stand-in for this test (pytest's monkeypatch); returns the `bd` on PATH."""
    monkeypatch.setenv("PATH", f"{fast_bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("BEADS_DIR", raising=False)
    monkeypatch.delenv("BD_JSON_ENVELOPE", raising=False)
    return fast_bin_dir() / "bd"


def run_bd(repo: Path, *args: str, env: dict[str, str] | None = None, check: bool = True,
           actor: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the stand-in in `repo` (outside any tracker), e.g. to set up issues for a test."""
    argv = [sys.executable, "-S", str(standin_path()), *args]
    if actor:
        argv += ["--actor", actor]
    proc = subprocess.run(argv, cwd=repo, env=env if env is not None else standin_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"bd {' '.join(args)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc


def bd_json(repo: Path, *args: str, actor: str | None = None) -> Any:
    """Run `bd <args> --json` with the stand-in and return the parsed output."""
    return json.loads(run_bd(repo, *args, "--json", actor=actor).stdout)


def make_beads_repo(path: Path, prefix: str = "tt") -> Path:
    """Create `path` (if needed) and `bd init --prefix <prefix>` it with the stand-in; returns path."""
    path.mkdir(parents=True, exist_ok=True)
    run_bd(path, "init", "--prefix", prefix, "--quiet")
    return path


def create_issue(repo: Path, title: str, *flags: str, actor: str | None = None) -> str:
    """`bd create <title> <flags> --silent` with the stand-in; returns the new id."""
    return run_bd(repo, "create", title, *flags, "--silent", actor=actor).stdout.strip()


def write_faults(path: Path, *faults: dict[str, Any]) -> Path:
    """Write a BD_STANDIN_FAULTS file listing `faults` (consumed by the stand-in as they fire)."""
    path.write_text(json.dumps(list(faults)), encoding="utf-8")
    return path


def logged_calls(log: Path) -> list[list[str]]:
    """The argv (without the program) of every stand-in call logged to BD_STANDIN_LOG."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
