"""Untrusted titles shown and committed (issue 17, items 5 and 18): no escape sequences, no control
characters, a bounded subject."""

from __future__ import annotations

from beads_runner.safe_text import SUBJECT_TITLE_MAX, one_line, printable
from beads_runner.status import render_review
from beads_runner.workspace import trailer_message

HOSTILE = "Fix \x1b]0;pwned\x07the \x1b[2J\x1b[31mbug\x1b[0m\x00 now\r\x08\u202eevil\x7f\x9b"


def test_escape_sequences_and_control_characters_are_stripped():
    assert printable(HOSTILE) == "Fix the bug now evil"
    assert printable("a\tb\nc", keep_newlines=True) == "a b\nc"
    assert one_line("x" * 500, 10) == "x" * 9 + "…"


def test_a_hostile_title_makes_a_clean_bounded_commit_subject():
    message = trailer_message(HOSTILE, "bd-1", "Did it.\x1b[2J", {"Beads-Issue": "bd-1"})
    subject = message.splitlines()[0]
    assert subject == "Fix the bug now evil (bd-1)"
    assert "\x1b" not in message and "\x00" not in message
    huge = trailer_message("y" * 200_000, "bd-2", "", {"Beads-Issue": "bd-2"}).splitlines()[0]
    assert len(huge) <= SUBJECT_TITLE_MAX + len(" (bd-2)") and huge.endswith("… (bd-2)")
    assert trailer_message("\x00\x1b[0m", "bd-3", "", {}).splitlines()[0] == "(no title) (bd-3)"


def test_review_shows_no_escape_sequence_of_a_title():
    data = {"target": "main", "commits": [{
        "sha": "0" * 40, "issue_id": "bd-1", "title": HOSTILE, "gates": "diff=pass", "agent": "x",
        "duration_s": None, "date": "2026-01-01", "run_id": None, "diff_command": "git show 000"}]}
    text = render_review(data)
    assert "\x1b" not in text and "\x00" not in text and "Fix the bug now evil" in text
