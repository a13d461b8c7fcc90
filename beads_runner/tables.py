"""Tables for people (rich): the one way `doctor` and `review` turn a rich table into text.

On a terminal a table fits its width (long cells wrap inside their column) and may be coloured. In
a pipe every row stays on one line, uncoloured and without trailing spaces, so that `grep` and
scripts find what they look for."""

from __future__ import annotations

from typing import Any


def table_text(renderable: Any, *, terminal: bool) -> str:
    from rich.console import Console

    console = Console(width=None if terminal else 100_000, force_terminal=terminal or None,
                      color_system="auto" if terminal else None, highlight=False)
    with console.capture() as captured:
        console.print(renderable)
    return "\n".join(line.rstrip() for line in captured.get().rstrip("\n").splitlines())
