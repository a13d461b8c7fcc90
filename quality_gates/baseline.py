"""Baseline comparison: which failure lines of a gate's output are new, and which the target already has.

Both runs' outputs are normalised line by line before being compared: the worktree directories are
stripped from paths, timings and timestamps are blanked, and (by default) every standalone number,
line and column numbers included, is replaced by `#` so that a message moved by an edit above it
still matches. Lines are compared as a multiset: two identical messages where the target had one
means one new failure.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:Z|[+-]\d\d:?\d\d)?")
_TIMING = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ns|us|µs|ms|s|secs?|seconds?|min|minutes?|h)\b")
_CLOCK = re.compile(r"(?<![\w.:])\d{1,2}:\d\d:\d\d(?:\.\d+)?\b")
_HEX_ADDR = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?!\w)")
_SPACES = re.compile(r"\s+")


def path_roots(*dirs: Path | str) -> list[str]:
    """Each directory as given and resolved, with a trailing separator, longest first."""
    roots: set[str] = set()
    for d in dirs:
        for form in (str(d), os.path.realpath(d)):
            form = form.rstrip("/")
            if form:
                roots.add(form + "/")
    return sorted(roots, key=len, reverse=True)


def strip_roots(line: str, roots: Sequence[str]) -> str:
    """`/tmp/wt/src/a.py` → `src/a.py`; the bare directory becomes `.`."""
    for root in roots:
        if root.rstrip("/") in line:
            bare = re.escape(root.rstrip("/"))
            line = re.sub(bare + r"(/|(?![\w.-]))", lambda m: "" if m.group(1) else ".", line)
    return line


def normalise(line: str, roots: Sequence[str], ignore_numbers: bool = True) -> str:
    line = strip_roots(line, roots)
    line = _TIMESTAMP.sub("<time>", line)
    line = _CLOCK.sub("<time>", line)
    line = _TIMING.sub("<time>", line)
    line = _HEX_ADDR.sub("<addr>", line)
    if ignore_numbers:
        line = _NUMBER.sub("#", line)
    return _SPACES.sub(" ", line).strip()


@dataclass(frozen=True)
class Comparison:
    new: list[str]  # failure lines of the change the target does not have (roots stripped)
    preexisting: list[str]  # failure lines the target has too


def compare(change_output: str, baseline_output: str, roots: Sequence[str], *,
            match: re.Pattern[str] | None = None, ignore_numbers: bool = True) -> Comparison:
    """Split the change's failure lines into new and pre-existing ones.

    Failure lines are the non-blank lines of the output, or only those `match` finds something in."""
    def failure_lines(output: str) -> Iterable[tuple[str, str]]:
        for raw in output.splitlines():
            shown = strip_roots(raw, roots).rstrip()
            if not shown.strip() or (match is not None and not match.search(shown)):
                continue
            yield shown, normalise(raw, roots, ignore_numbers)

    remaining = Counter(norm for _, norm in failure_lines(baseline_output))
    new: list[str] = []
    old: list[str] = []
    for shown, norm in failure_lines(change_output):
        if remaining[norm] > 0:
            remaining[norm] -= 1
            old.append(shown)
        else:
            new.append(shown)
    return Comparison(new, old)
