"""The prompt: the issue as data, and a repository's own template when it has one."""

from __future__ import annotations

from beads_runner.prompt import DEFAULT_TEMPLATE, load_template, render_prompt
from beads_runner.tracker.base import Issue


def test_default_prompt_carries_every_field_of_the_issue():
    issue = Issue(id="bd-9", title="Fix it", description="Desc $HOME {x}", design="Design", acceptance_criteria="AC",
                  notes="Notes", issue_type="bug", priority=1)
    text = render_prompt(issue, DEFAULT_TEMPLATE, "main")
    for part in ("bd-9", "Fix it", "Desc $HOME {x}", "Design", "AC", "Notes", "bug", "P1"):
        assert part in text
    assert "do not commit" in text


def test_empty_fields_are_said_to_be_empty_and_an_empty_title_is_named():
    text = render_prompt(Issue(id="bd-1", title=""), DEFAULT_TEMPLATE)
    assert "(no title)" in text and "(none)" in text


def test_a_repository_template_replaces_the_default(tmp_path):
    (tmp_path / "prompt.md").write_text("Work on $issue_id: $title against $target. Cost: $5 $unknown\n")
    template = load_template(tmp_path)
    text = render_prompt(Issue(id="bd-2", title="Thing"), template, "trunk")
    assert text == "Work on bd-2: Thing against trunk. Cost: $5 $unknown\n"  # stray $ stays as it is
    assert load_template(tmp_path / "missing") == DEFAULT_TEMPLATE
