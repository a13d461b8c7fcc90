"""Path globs for `when`, `[diff] forbidden` and the like, matched against repo-relative paths.

`*` and `?` stay within one path segment, `**` spans any number of segments (`a/**` is everything
under a, `**/x.py` is x.py at any depth), `[abc]` is a character class. A pattern without a `/`
matches the file name at any depth, as in .gitignore: `*.py` matches `src/a/b.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache


@lru_cache(maxsize=512)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """The regex of one glob; ValueError for an empty or malformed pattern."""
    pat = pattern.strip()
    if not pat:
        raise ValueError("the empty string is not a glob")
    pat = pat.removeprefix("./")
    if pat.startswith("/"):
        pat = pat[1:]
    elif "/" not in pat.rstrip("/"):
        pat = "**/" + pat
    if pat.endswith("/"):
        pat += "**"
    out, i, n = [], 0, len(pat)
    while i < n:
        c = pat[i]
        if pat.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pat.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pat.find("]", i + 2 if pat[i + 1:i + 2] in ("!", "]") else i + 1)
            if j < 0:
                raise ValueError(f"unclosed [ in glob {pattern!r}")
            body = pat[i + 1:j]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    try:
        return re.compile("".join(out) + r"\Z")
    except re.error as exc:
        raise ValueError(f"malformed glob {pattern!r}: {exc}") from None


def matches(path: str, patterns: Iterable[str]) -> bool:
    """Whether the repo-relative `path` matches any of `patterns`."""
    path = path.removeprefix("./")
    return any(compile_glob(p).match(path) for p in patterns)


def validate_globs(patterns: Iterable[str]) -> list[str]:
    """The patterns, each checked to compile (ValueError names the bad one)."""
    out = []
    for p in patterns:
        compile_glob(p)
        out.append(p)
    return out
