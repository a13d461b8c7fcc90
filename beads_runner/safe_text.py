"""Text from the tracker or the agent, made safe to show: no terminal escape sequences, no control
characters, no bidi overrides, and one line of bounded length where one line is meant.

Issue titles are untrusted: a title can carry `ESC ]` sequences that retitle a terminal or rewrite
what `review` shows, a NUL byte that no argv or commit message can hold, or 200 KB that would become
a 200 KB commit subject.
"""

from __future__ import annotations

import re

SUBJECT_TITLE_MAX = 120  # characters of an issue title in a commit subject

# CSI (ESC [ … final), OSC (ESC ] … BEL or ST), and two-character escapes.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# C0 and C1 controls (tab and newline handled apart), DEL, and the bidi embedding/override/isolate marks.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """`text` without escape sequences and control characters; tabs become spaces, and newlines
    too unless `keep_newlines`."""
    value = "" if text is None else str(text)
    value = _ESCAPES.sub("", value).replace("\t", " ").replace("\r\n", "\n").replace("\r", "\n")
    if not keep_newlines:
        value = value.replace("\n", " ")
    return _CONTROLS.sub("", value)


def one_line(text: object, limit: int) -> str:
    """printable, on one line with runs of whitespace collapsed, at most `limit` characters."""
    line = " ".join(printable(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
