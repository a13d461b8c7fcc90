"""Version checks (beads_runner/versions.py), the one place versions are compared."""

import pytest

from beads_runner.tracker import parse
from beads_runner.versions import at_least, version_in


@pytest.mark.parametrize(("text", "wanted", "expected"), [
    ("1.0.4", (1, 0, 4), True),
    ("1.0.3", (1, 0, 4), False),
    ("1.0.10", (1, 0, 4), True),  # numbers, not text: 10 > 4
    ("0.63", (0, 63), True),
    ("0.62.1", (0, 63), False),
    ("bd version 1.0.5 (dev)", (1, 0, 4), True),
    ("v2.1", (1, 0, 4), True),
    ("", (1,), False),
    ("no number here", (0,), True),
])
def test_at_least(text, wanted, expected):
    assert at_least(text, *wanted) is expected
    assert parse.at_least(text, *wanted) is expected  # bd's checks go through it


def test_postgres_directories_sort_by_number():
    assert sorted(["9.6", "15", "13"], key=version_in) == ["9.6", "13", "15"]
