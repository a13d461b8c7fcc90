"""`doctor`'s table (rich): one row per check, the fix under a problem, never markup or wrapping in a pipe."""

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
