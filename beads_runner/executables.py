"""Finding the program a configured command names: the one lookup of the runner.

Used for bd (`tracker.command`), the agents (`agent.command`, opencode), the gates' argv[0] and the
sandbox (which must show the program to the confined process). A command with a slash names a
file, relative to a base directory (the repository, or the directory the program runs in); a bare
name is looked up on PATH, like the shell and `subprocess` do.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def names_a_path(command: str) -> bool:
    """Whether `command` names a file (has a slash) rather than a program to look up on PATH."""
    return os.sep in command or bool(os.altsep and os.altsep in command)


def is_executable_file(path: Path | str) -> bool:
    path = Path(path)
    return path.is_file() and os.access(path, os.X_OK)


def as_path(command: str, base: Path | str, *, expand_user: bool = True) -> Path | None:
    """The file a command with a slash names (relative ones under `base`); None for a bare name.

    expand_user: `~/bin/bd` means the home directory (configuration values); off for a gate's
    argv[0], which runs without a shell and so without `~` expansion."""
    if not names_a_path(command):
        return None
    path = Path(command).expanduser() if expand_user else Path(command)
    return path if path.is_absolute() else Path(base) / path


def on_path(name: str, path: str | None = None) -> str | None:
    """Where the program `name` is on `path` (default: this process's PATH), or None."""
    return shutil.which(name) if path is None else shutil.which(name, path=path)


def find(command: str, base: Path | str, *, path: str | None = None, expand_user: bool = True) -> str | None:
    """The executable `command` runs from `base`, or None: a file that is not executable, or a bare
    name not on `path` (default: this process's PATH)."""
    file = as_path(command, base, expand_user=expand_user)
    if file is not None:
        return str(file) if is_executable_file(file) else None
    return on_path(command, path)
