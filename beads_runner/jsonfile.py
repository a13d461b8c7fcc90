"""Small JSON records kept in files beside the worktrees (an issue's session memory, its retry
note): read forgivingly, written atomically (a reader never sees half a file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str) -> None:
    """`text` into `path`, whole or not at all (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class JsonFile:
    """One JSON object in one file. A missing, unreadable or non-object file reads as {}."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, data: dict[str, Any]) -> None:
        write_atomic(self.path, json.dumps(data))

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)
