"""`beads-runner verify`: what counts as a close reason naming the landed commit."""

from __future__ import annotations

from beads_runner.verify import Verdict, names_commit

SHA = "3f2a9c81d0b4e5f60718293a4b5c6d7e8f901234"


def test_the_close_reason_names_the_commit_by_an_abbreviation_of_seven_or_more():
    assert names_commit("Landed 3f2a9c81 on main (gates: tests=pass)", SHA)
    assert names_commit("landed 3F2A9C8 by hand", SHA)
    assert not names_commit("Landed 3f2a9c on main", SHA)  # six digits name nothing for sure
    assert not names_commit("Landed 0badc0de on main", SHA)
    assert not names_commit("", SHA)


def test_a_verdict_is_ok_only_without_problems():
    v = Verdict("x-1", status="closed", commit=SHA)
    assert v.ok and v.as_dict()["ok"]
    v.problems.append("no commit")
    assert not v.ok and v.as_dict()["problems"] == ["no commit"]
