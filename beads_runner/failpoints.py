"""Failpoints: named places where a test can stop the runner dead, to prove it survives a crash there.

`BEADS_RUNNER_FAILPOINT=<name>[,<name>...]` makes `failpoint(name)` write
`$BEADS_RUNNER_FAILPOINT_DIR/<name>.hit` and then pause forever, so the test kills the runner
(SIGKILL, its whole process group) at exactly that point. Unset (always, in real use), a failpoint
is one set lookup.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_ARMED = frozenset(filter(None, os.environ.get("BEADS_RUNNER_FAILPOINT", "").split(",")))

POINTS = ("check-deps", "session-edited", "after-commit", "after-land", "after-close")


def failpoint(name: str) -> None:
    if name not in _ARMED:
        return
    directory = Path(os.environ.get("BEADS_RUNNER_FAILPOINT_DIR", "."))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.hit").write_text(str(os.getpid()))
    threading.Event().wait()  # until killed
