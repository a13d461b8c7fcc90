"""bd's output (real fixtures and every error shape of the contract) → Issue objects or typed errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beads_runner.errors import ClaimConflict, IssueNotFound, TrackerBusy, TrackerError, TrackerUnavailable
from beads_runner.tracker import parse

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "beads"


def fixture_lines(pattern: str) -> list[tuple[str, dict]]:
    lines = []
    for path in sorted(FIXTURES.glob(pattern)):
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if text.strip():
                lines.append((f"{path.name}:{number}", json.loads(text)))
    assert lines, f"no fixture lines matched {pattern} in {FIXTURES}"
    return lines


# -- fixtures ---------------------------------------------------------------------------------------


def test_every_fixture_issue_line_parses():
    lines = fixture_lines("*.issues*.jsonl")
    assert len(lines) >= 16
    for where, obj in lines:
        issue = parse.issue_from_dict(obj, where)
        assert issue.id == obj["id"], where
        assert issue.title == (obj.get("title") or ""), where
        assert isinstance(issue.priority, int), where
        assert issue.labels == sorted(obj.get("labels") or []), where
        assert issue.assignee == (obj.get("assignee") or ""), where  # null → ""


def test_fixture_dependencies_become_blockers():
    by_id = {obj["id"]: parse.issue_from_dict(obj) for _, obj in fixture_lines("*.issues*.jsonl")}
    wisp = by_id["bd-wisp-t7gxl"]
    assert [(b.id, b.type, b.status) for b in wisp.blockers] == [
        ("bd-wisp-3tmpl", "parent-child", None), ("bd-wisp-i27f2", "blocks", None)]
    assert [b.id for b in wisp.open_blockers] == ["bd-wisp-i27f2"]  # status unknown: counts as open
    assert wisp.parent == "bd-wisp-3tmpl"
    # SQLite era: parent-child only, no `parent` field: the parent comes from the dependency.
    child = by_id["bd-dolt.2"]
    assert child.parent == "bd-dolt" and child.open_blockers == []
    # discovered-from never blocks.
    assert by_id["bd-ktng"].blockers[0].type == "discovered-from" and by_id["bd-ktng"].open_blockers == []
    assert by_id["bd-3kbmj"].labels == ["backend", "urgent"]
    assert by_id["bd-3kbmj"].close_reason == "Test artifact - cleaning up"


def test_fixture_work_types():
    by_id = {obj["id"]: parse.issue_from_dict(obj) for _, obj in fixture_lines("*.issues*.jsonl")}
    assert not by_id["bd-rig-beads"].is_work  # infrastructure type
    assert not by_id["bd-mol-bzx"].is_work  # gate
    assert not by_id["offlinebrew-3d0"].is_work  # epic
    assert by_id["bd-main-idj"].is_work and by_id["bd-main-idj"].status == "in_progress"


def test_backup_row_with_nulls_and_int_flags_parses():
    [(_, row)] = fixture_lines("backup-dump.issues.jsonl")
    issue = parse.issue_from_dict(row)
    assert issue.assignee == "" and issue.priority == 1 and issue.status == "closed"
    assert issue.close_reason == "Closed" and issue.blockers == []


def test_fixture_comments_parse_with_integer_ids():
    rows = [obj for _, obj in fixture_lines("backup-dump.comments.jsonl")]
    comments = parse.comments_from_data(rows)
    assert [c["id"] for c in comments] == ["1", "2"]
    assert comments[0]["author"] == "beads/refinery" and comments[0]["issue_id"] == "bd-fu1"


# -- shapes -----------------------------------------------------------------------------------------

ISSUE = {"id": "bd-a1", "title": "T", "status": "open", "priority": 1, "issue_type": "task"}


def test_bare_array_envelope_and_show_object_all_unwrap():
    bare = json.dumps([ISSUE])
    enveloped = json.dumps({"schema_version": 1, "data": [ISSUE]})
    show_obj = json.dumps(ISSUE)
    show_obj_env = json.dumps({"schema_version": 1, "data": ISSUE})
    for text in (bare, enveloped, show_obj, show_obj_env):
        data = parse.check_output("bd show bd-a1", 0, text, "")
        [issue] = parse.issues_from_data(data)
        assert issue.id == "bd-a1" and issue.priority == 1


def test_object_with_schema_version_is_not_mistaken_for_an_envelope():
    comment = {"id": "0190-uuid", "issue_id": "bd-a1", "author": "me", "text": "hi", "created_at": "x",
               "schema_version": 1}
    assert parse.check_output("bd comments add", 0, json.dumps(comment), "") == comment


def test_empty_list_and_null():
    assert parse.issues_from_data(parse.check_output("bd ready", 0, "[]\n", "")) == []
    assert parse.issues_from_data(parse.check_output("bd ready", 0, "null", "")) == []


def test_strings_ints_nulls_and_extra_fields():
    obj = {"id": "bd-x", "title": None, "priority": "3", "labels": None, "assignee": None, "status": None,
           "dependencies": None, "whatever": {"nested": [1, 2]}, "ephemeral": 1, "parent": None}
    issue = parse.issue_from_dict(obj)
    assert (issue.title, issue.priority, issue.labels, issue.status, issue.blockers) == ("", 3, [], "", [])


def test_show_dependencies_are_resolved_issue_objects():
    shown = {**ISSUE, "dependencies": [
        {"id": "bd-b", "title": "B", "status": "in_progress", "dependency_type": "blocks"},
        {"id": "bd-c", "title": "C", "status": "closed", "dependency_type": "blocks"},
        {"id": "bd-e", "title": "E", "status": "open", "dependency_type": "parent-child", "issue_type": "epic"},
        {"id": "bd-r", "title": "R", "status": "open", "dependency_type": "related"},
    ], "dependents": [{"id": "bd-z", "status": "open", "dependency_type": "blocks"}]}
    issue = parse.issue_from_dict(shown)
    assert [(b.id, b.type, b.status) for b in issue.blockers] == [
        ("bd-b", "blocks", "in_progress"), ("bd-c", "blocks", "closed"), ("bd-e", "parent-child", "open"),
        ("bd-r", "related", "open")]
    assert [b.id for b in issue.open_blockers] == ["bd-b"]  # in_progress still blocks
    assert issue.parent == "bd-e"


def test_raw_records_of_other_issues_are_not_blockers():
    obj = {**ISSUE, "dependencies": [
        {"issue_id": "bd-a1", "depends_on_id": "bd-b", "type": "conditional-blocks", "metadata": "{\"k\":1}"},
        {"issue_id": "bd-other", "depends_on_id": "bd-a1", "type": "blocks"},
    ]}
    assert [(b.id, b.type) for b in parse.issue_from_dict(obj).blockers] == [("bd-b", "conditional-blocks")]


def test_non_issue_json_is_a_tracker_error():
    with pytest.raises(TrackerError, match="bd ready"):
        parse.issues_from_data({"count": 3}, "bd ready")
    with pytest.raises(TrackerError, match="not a list"):
        parse.issues_from_data(42, "bd ready")


# -- errors -----------------------------------------------------------------------------------------


def test_error_object_on_stdout():
    out = json.dumps({"error": "no issues found matching the provided IDs", "schema_version": 1})
    with pytest.raises(IssueNotFound) as info:
        parse.check_output("bd show bd-zz", 1, out, "")
    assert "bd show bd-zz" in str(info.value) and "no issues found matching" in str(info.value)


def test_error_object_on_stderr_with_hint_and_noise():
    err = "warning: something\n" + json.dumps({"error": "validation failed: bad status", "hint": "use open"})
    with pytest.raises(TrackerError) as info:
        parse.check_output("bd update bd-a1", 1, "", err)
    assert type(info.value) is TrackerError
    assert "bd update bd-a1" in str(info.value) and "validation failed: bad status" in str(info.value)
    assert "use open" in (info.value.fix or "")


def test_error_object_on_exit_zero_still_raises():
    with pytest.raises(TrackerError, match="boom"):
        parse.check_output("bd list", 0, json.dumps({"error": "boom"}), "")


def test_enveloped_error():
    with pytest.raises(IssueNotFound):
        parse.check_output("bd show x", 1, json.dumps({"schema_version": 1, "data": {
            "error": "no issues found matching the provided IDs"}}), "")


def test_no_database_is_unavailable_with_bd_init_fix():
    with pytest.raises(TrackerUnavailable) as info:
        parse.check_output("bd ready", 1, "", "Error: no beads database found\nHint: run 'bd init'\n")
    assert "bd init" in info.value.fix and "no beads database found" in str(info.value)


def test_claim_conflict_names_the_holder():
    with pytest.raises(ClaimConflict) as info:
        parse.check_output("bd update bd-a1 --claim", 1, "", "Error claiming bd-a1: issue already claimed by alice\n")
    assert "alice" in str(info.value) and "bd update bd-a1 --claim" in str(info.value)


@pytest.mark.parametrize("text", [
    "Error: failed to open database: database is locked",
    "Error: lock held by another process (pid 123)",
    "open .beads/embeddeddolt/.dolt/noms/LOCK: resource temporarily unavailable",
    "Error: the database is locked by another dolt process",
    "error: could not acquire the store lock within 5s",
    "Error 1213: serialization failure: this transaction conflicts with a committed transaction; "
    "try restarting transaction",
    "database locked by another sql-server; either clone the database or delete '.dolt/sql-server.lock'",
])
def test_lock_errors_are_busy(text):
    with pytest.raises(TrackerBusy) as info:
        parse.check_output("bd update bd-a1", 1, "", text)
    assert info.value.retryable and text[:30] in str(info.value)


def test_garbage_on_exit_zero_is_busy_and_quotes_it():
    with pytest.raises(TrackerBusy) as info:
        parse.check_output("bd ready", 0, "panic: runtime error\n{\"id\":", "")
    assert "not JSON" in str(info.value) and "panic: runtime error" in str(info.value)
    assert "bd ready" in str(info.value)


def test_empty_output_on_exit_zero_is_busy_unless_json_is_optional():
    with pytest.raises(TrackerBusy, match="nothing"):
        parse.check_output("bd ready", 0, "", "")
    assert parse.check_output("bd comments add", 0, "", "", expect_json=False) is None


@pytest.mark.parametrize("text,flag", [
    ("Error: unknown flag: --no-daemon\nRun 'bd --help' for usage.", "--no-daemon"),
    ("Error: unknown shorthand flag: 'z' in -z", "'z'"),
])
def test_unknown_flag_names_the_flag(text, flag):
    with pytest.raises(TrackerError) as info:
        parse.check_output("bd ready --claim", 1, "", text)
    assert isinstance(info.value, parse.UnknownFlag) and not info.value.retryable
    assert flag in str(info.value) and "bd ready --claim" in str(info.value)


def test_close_refused_for_open_blockers():
    with pytest.raises(parse.CloseBlocked, match=r"blocked by open issues \[bd-b\]"):
        parse.check_output("bd close bd-a1", 1, "", "cannot close bd-a1: blocked by open issues [bd-b]\n")


def test_plain_text_failure_keeps_bd_text_and_exit_code():
    with pytest.raises(TrackerError) as info:
        parse.check_output("bd dep add a b", 1, "", "Error: something odd happened\n")
    assert type(info.value) is TrackerError
    assert "something odd happened" in str(info.value) and "exit 1" in str(info.value)


def test_describe_command_hides_runner_flags_and_quotes_text():
    shown = parse.describe_command(["bd", "comments", "add", "bd-a", "two words", "--json", "--actor", "me"])
    assert shown == 'bd comments add bd-a "two words"'


# -- versions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stdout,expected", [
    ('{"version": "1.0.5", "build": "dev"}', "1.0.5"),
    ('{"schema_version": 1, "data": {"version": "1.0.3", "build": "x"}}', "1.0.3"),
    ("bd version 0.62.1 (dev: main@abc123)\n", "0.62.1"),
    ('"v1.1"', "1.1"),
])
def test_parse_version(stdout, expected):
    assert parse.parse_version(stdout) == expected


def test_version_compare():
    assert parse.at_least("1.0.4", 1, 0, 4) and not parse.at_least("1.0.3", 1, 0, 4)
    assert parse.at_least("0.63.0", 0, 63) and not parse.at_least("0.62.9", 0, 63)
    with pytest.raises(TrackerError, match="no version"):
        parse.parse_version("hello")


@pytest.mark.parametrize(("data", "expected"), [
    ({"backend": "dolt", "database": "tt", "embedded": True, "data_dir": "/r/.beads/embeddeddolt"}, "embedded"),
    ({"backend": "dolt", "embedded": False, "host": "127.0.0.1", "port": 3307}, "server 127.0.0.1:3307"),
    ({"mode": "embedded", "server_running": False}, "embedded"),  # `bd dolt status --json`
    ({"schema_version": 1, "data": {"embedded": True}}, "embedded"),  # BD_JSON_ENVELOPE=1
    ({"backend": "sqlite"}, "sqlite"),
    ([], "unknown"),
])
def test_parse_store_mode(data, expected):
    assert parse.parse_store_mode(data) == expected
