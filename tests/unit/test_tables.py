"""Tables for people (rich, beads_runner/tables.py): doctor's checks and review's commits, one row each; in a pipe
never wrapped nor marked up, on a terminal folded inside their column."""

from beads_runner.doctor import Check, render_checks


def test_a_pipe_gets_one_uncoloured_line_per_check_and_the_fix_under_its_problem():
    checks = [Check("config", True, "no config file: all defaults"),
              Check("tracker", False, "the bd executable 'no-such-bd' was not found on PATH", "install [bold]bd[/]"),
              Check("agent", True, "opencode " + "x" * 300)]
    lines = render_checks(checks, terminal=False).splitlines()
    assert lines[0] == "[ok  ] config   no config file: all defaults"  # names padded to the longest, then two spaces
    assert lines[1].startswith("[FAIL] tracker ") and lines[1].endswith("'no-such-bd' was not found on PATH")
    assert lines[2].strip() == "fix: install [bold]bd[/]"  # text, not rich markup
    assert lines[2].index("fix:") == lines[1].index("the bd")  # in the detail column
    assert lines[3].endswith("x" * 300)  # a long detail stays on its line for grep
    assert len(lines) == 4 and "\x1b" not in "".join(lines)


def test_a_terminal_shows_a_failure_in_red():
    text = render_checks([Check("git", False, "not a repository")], terminal=True)
    assert "\x1b[" in text and "[FAIL]" in text


def test_review_rows_keep_their_column_in_a_pipe_and_fold_inside_it_on_a_terminal():
    from beads_runner.review import render_review

    commit = {"sha": "a" * 40, "issue_id": "bd-1", "title": "Add the greeting " * 8, "gates": "diff=pass",
              "agent": "opencode", "duration_s": 12.5, "attempts": 1, "tokens": 219, "cost": 0.25,
              "date": "2026-01-01T00:00:00Z", "run_id": "run-1", "diff_command": "git show aaaaaaaaaa"}
    piped = render_review({"target": "main", "commits": [commit]}).splitlines()
    assert piped[2].startswith("aaaaaaaaaa   bd-1    Add the greeting") and piped[2].endswith("greeting")
    assert piped[4].strip() == "1 attempt(s), took 12s, 219 tokens, $0.2500"
    column = piped[2].index("Add")
    assert all(line.index(line.strip()) == column for line in piped[3:])  # the details under the title
    # a terminal narrower than the title: it folds inside its column, never under the commit or issue
    from rich.console import Console

    from beads_runner import tables

    narrow = Console(width=60, color_system=None)
    with narrow.capture() as out:
        from beads_runner.review import commits_table

        narrow.print(commits_table([commit]))
    rows = [line for line in out.get().splitlines()[2:] if line.strip()]
    assert len(rows) > 5 and all(line[:column].strip() in ("", "aaaaaaaaaa   bd-1") for line in rows)
    assert tables.table_text("x", terminal=False) == "x"
