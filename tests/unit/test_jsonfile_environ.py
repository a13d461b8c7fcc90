"""beads_runner/jsonfile.py (small JSON records, written whole) and beads_runner/environ.py."""

from __future__ import annotations

import os

from beads_runner.environ import environment
from beads_runner.jsonfile import JsonFile, write_atomic


def test_a_record_round_trips_and_bad_files_read_as_empty(tmp_path):
    record = JsonFile(tmp_path / "deep" / "x.json")
    assert record.load() == {}  # missing
    record.write({"a": 1})
    assert record.load() == {"a": 1} and not list(tmp_path.glob("deep/*.tmp"))
    record.path.write_text("[1, 2]")
    assert record.load() == {}  # not an object
    record.path.write_text("{half")
    assert record.load() == {}
    record.forget()
    record.forget()  # twice is fine
    assert not record.path.exists()


def test_write_atomic_replaces_the_whole_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old and long")
    write_atomic(path, "new")
    assert path.read_text() == "new"


def test_environment_sets_then_restores(monkeypatch):
    monkeypatch.setenv("BR_TEST_KEPT", "before")
    monkeypatch.delenv("BR_TEST_NEW", raising=False)
    with environment({"BR_TEST_KEPT": "during", "BR_TEST_NEW": "x"}):
        assert os.environ["BR_TEST_KEPT"] == "during" and os.environ["BR_TEST_NEW"] == "x"
    assert os.environ["BR_TEST_KEPT"] == "before" and "BR_TEST_NEW" not in os.environ
