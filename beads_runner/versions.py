"""Version numbers of the tools the runner drives (bd, PostgreSQL), compared with `packaging`.

Tools print their versions inside text (`bd version 1.0.3 (dev)`, a directory named `15`): the
first number like `1.0.3` (or `v1.0`, or a lone `15`) is taken; text without one reads as 0.
"""

from __future__ import annotations

import re

from packaging.version import Version

_NUMBER = re.compile(r"(?<![\w.])v?(\d+(?:\.\d+)*)")


def version_in(text: str | None) -> Version:
    """The first version number in `text`, or 0."""
    m = _NUMBER.search(text or "")
    return Version(m.group(1)) if m else Version("0")


def at_least(text: str | None, *wanted: int) -> bool:
    """Whether the version in `text` is `wanted` (e.g. 1, 0, 4) or later; no version in it: only 0 is."""
    return version_in(text) >= Version(".".join(str(part) for part in wanted) or "0")
