"""Path globs (quality_gates/globs.py): .gitignore's patterns, matched by pathspec."""

import pytest

from quality_gates.globs import compile_glob, matches, validate_globs


@pytest.mark.parametrize(("path", "patterns", "expected"), [
    ("src/a/b.py", ["*.py"], True),  # no slash: any depth
    ("src/a/b.pyc", ["*.py"], False),
    ("src/b.py", ["src/*.py"], True),
    ("src/a/b.py", ["src/*.py"], False),  # `*` stays within one segment
    ("src/a/b.py", ["src/**/*.py"], True),
    ("lib/src/b.py", ["src/*.py"], False),  # a slash anchors to the root
    (".ci/x/y.sh", ["/.ci/**"], True),
    ("x/.ci/y.sh", ["/.ci/**"], False),
    ("docs/a/b.md", ["docs/"], True),
    ("vendor/x/y.c", ["vendor"], True),  # as in .gitignore: the directory and all under it
    ("./README.md", ["README.md"], True),
    ("src/vendor/x.py", ["src/**", "!src/vendor/**"], False),  # a later `!` takes paths back out
    ("src/x.py", ["src/**", "!src/vendor/**"], True),
    ("ab.txt", ["[ab]b.txt"], True),
    ("cb.txt", ["[!c]b.txt"], False),
    ("anything", [], False),
])
def test_gitignore_semantics(path, patterns, expected):
    assert matches(path, patterns) is expected


@pytest.mark.parametrize(("pattern", "problem"), [("", "empty"), ("   ", "empty"), ("[oops", r"unclosed \["),
                                                  ("!", "not a glob")])
def test_a_bad_glob_is_named(pattern, problem):
    with pytest.raises(ValueError, match=problem):
        compile_glob(pattern)
    with pytest.raises(ValueError, match=problem):
        validate_globs(["ok/**", pattern])


def test_an_escaped_bracket_is_a_plain_character():
    assert matches("a[1.txt", [r"a\[1.txt"])
