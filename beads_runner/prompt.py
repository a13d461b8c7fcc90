"""The prompt an agent session gets: the issue, as data, on stdin.

The default template can be replaced by `.beads-runner/prompt.md` in the repository. Templates use
`$name` placeholders (string.Template): $issue_id, $title, $description, $design,
$acceptance_criteria, $notes, $issue_type, $priority, $target.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

from beads_runner.tracker.base import Issue

PROMPT_FILE = "prompt.md"

DEFAULT_TEMPLATE = """\
You are implementing one issue of this repository's beads tracker, working in a git worktree of
the repository. Make the change the issue asks for by editing files in this directory.

Rules:
- Edit files only; do not commit, push, switch branches or touch `.beads/` and `.beads-runner/`.
  The runner reviews your change, runs the project's quality gates, commits and lands it.
- Keep the change focused on this issue, and add or update tests where the project has them.
- Finish with a short summary of what you changed and why (it becomes the commit body).

Issue $issue_id ($issue_type, priority $priority): $title

Description:
$description

Design:
$design

Acceptance criteria:
$acceptance_criteria

Notes:
$notes
"""


def load_template(state_dir: Path) -> str:
    custom = state_dir / PROMPT_FILE
    return custom.read_text(encoding="utf-8") if custom.is_file() else DEFAULT_TEMPLATE


def render_prompt(issue: Issue, template: str, target: str = "main") -> str:
    values = {
        "issue_id": issue.id,
        "title": issue.title or "(no title)",
        "description": issue.description.strip() or "(none)",
        "design": issue.design.strip() or "(none)",
        "acceptance_criteria": issue.acceptance_criteria.strip() or "(none)",
        "notes": issue.notes.strip() or "(none)",
        "issue_type": issue.issue_type,
        "priority": f"P{issue.priority}",
        "target": target,
    }
    # safe_substitute: the issue's own text is never a template, and a stray `$` in a custom
    # template stays as it is rather than failing a run.
    return Template(template).safe_substitute(values)
