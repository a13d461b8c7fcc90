"""Issue ids come from the tracker and are untrusted text: check them before they name anything."""

from __future__ import annotations

import re

from beads_runner.errors import UnsafeIdError

# bd ids look like `bd-a3f2`, `bd-a3f8e9.1`, `proj-main-idj`: a prefix, hyphens, dots for children.
# Anything else (slashes, `..`, spaces, shell metacharacters, control characters, unicode) is refused:
# an id names a git branch (`beads-runner/<id>`) and a directory (`.beads-runner/worktrees/<id>`).
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
MAX_ID_LENGTH = 100


def is_safe_issue_id(issue_id: object) -> bool:
    return (
        isinstance(issue_id, str)
        and 0 < len(issue_id) <= MAX_ID_LENGTH
        and _SAFE_ID.fullmatch(issue_id) is not None
        and not issue_id.endswith(".lock")
    )


def require_safe_issue_id(issue_id: object) -> str:
    """Return the id if it may name a branch and a path, else raise UnsafeIdError."""
    if is_safe_issue_id(issue_id):
        return issue_id  # type: ignore[return-value]
    shown = repr(issue_id)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise UnsafeIdError(
        f"issue id {shown} is not safe as a git branch and directory name; it was not used",
        fix="give the issue an id of letters, digits, '-', '_' and '.'-separated parts "
        "(like bd-a3f2 or bd-a3f8e9.1), at most 100 characters",
    )
