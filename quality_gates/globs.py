"""Path globs for `when`, `[diff] forbidden` and the like, matched against repo-relative paths.

The patterns are .gitignore's (matched by `pathspec`, the library git-aware tools use): `*` and
`?` stay within one path segment, `**` spans any number of segments (`a/**` is everything under
a, `**/x.py` is x.py at any depth), `[abc]` is a character class. A pattern without a `/` (but a
trailing one) matches at any depth: `*.py` matches `src/a/b.py`, and `vendor` matches the directory
vendor and all under it. A leading `/` anchors to the repository's root; a trailing `/` matches
a directory and all under it. Later `!pattern`s take paths back out, as in .gitignore.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import pathspec


def _check(pattern: str) -> str:
    """ValueError for what .gitignore would silently take as matching nothing (or everything)."""
    pat = pattern.strip()
    if not pat or pat in ("!", "/"):
        raise ValueError(f"{pattern!r} is not a glob" if pattern.strip() else "the empty string is not a glob")
    i = 0
    while i < len(pat):
        if pat[i] == "\\":
            i += 2
            continue
        if pat[i] == "[":
            end = pat.find("]", i + 2 if pat[i + 1:i + 2] in ("!", "^", "]") else i + 1)
            if end < 0:
                raise ValueError(f"unclosed [ in glob {pattern!r}")
            i = end
        i += 1
    return pat.removeprefix("./")


@lru_cache(maxsize=512)
def _spec(patterns: tuple[str, ...]) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines([_check(p) for p in patterns])


def compile_glob(pattern: str) -> pathspec.GitIgnoreSpec:
    """The matcher of one glob; ValueError for an empty or malformed pattern."""
    return _spec((pattern,))


def matches(path: str, patterns: Iterable[str]) -> bool:
    """Whether the repo-relative `path` matches `patterns` (the last that matches decides)."""
    patterns = tuple(patterns)
    return bool(patterns) and _spec(patterns).match_file(path.removeprefix("./"))


def validate_globs(patterns: Iterable[str]) -> list[str]:
    """The patterns, each checked (ValueError names the bad one)."""
    out = []
    for p in patterns:
        compile_glob(p)
        out.append(p)
    return out
