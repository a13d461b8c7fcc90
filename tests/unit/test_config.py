"""`.beads-runner.toml`: defaults, durations, and errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from beads_runner.config import CONFIG_FILE, Config, load_config, parse_duration, validate_config
from beads_runner.errors import ConfigError


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(data, "cfg.toml")
    return str(info.value)


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    assert config == Config() and config.gates == [] and config.diff.enabled and config.land.target == "main"


@pytest.mark.parametrize("value, seconds", [("30s", 30), ("5m", 300), ("1h", 3600), ("250ms", 0.25), (90, 90),
                                            (1.5, 1.5), (" 2 m ", 120)])
def test_durations(value, seconds) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["0s", -5, 0, "5 days", "", True, None, [1]])
def test_bad_durations(value) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("[agent]\ntimeout = \"forever\"\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(tmp_path / CONFIG_FILE) in str(info.value) and "agent.timeout" in str(info.value)
    assert str(tmp_path / CONFIG_FILE) in info.value.fix


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("[agent\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(tmp_path)


@pytest.mark.parametrize("data, key, words", [
    ({"tracker": {"kind": "jira"}}, "tracker.kind", "'bd' or 'jsonl'"),
    ({"agent": {"model": "gpt"}}, "agent.model", "provider/model"),
    ({"agent": {"timeout": "-1s"}}, "agent.timeout", "duration"),
    ({"engine": {"max_sessions": 0}}, "engine.max_sessions", "greater than or equal to 1"),
    ({"engine": {"retry": {"attempts": "three"}}}, "engine.retry.attempts", "integer"),
    ({"land": {"target": ""}}, "land.target", "at least 1 character"),
    ({"trackr": {}}, "trackr", "unknown key"),
    ({"agent": {"modle": "a/b"}}, "agent.modle", "unknown key (not a setting of [agent]"),
    ({"agent": {"mode": "daemon"}}, "agent.mode", "'run' or 'server'"),
    ({"agent": {"kind": "command", "command": "x", "mode": "server"}}, "agent.mode",
     'must be "run" when agent.kind is "command"'),
])
def test_errors_name_the_key(data, key, words) -> None:
    text = error_of(data)
    assert "cfg.toml is invalid" in text and f"{key}:" in text and words in text


# --- [[gates]] ---------------------------------------------------------------------------

def test_gate_defaults_and_both_run_forms() -> None:
    config = validate_config({"gates": [
        {"name": "tests", "run": "python -m pytest -q 'a b'"},
        {"name": "lint", "run": ["ruff", "check", "."], "when": "*.py", "baseline": True, "timeout": "2m",
         "env": {"NO_COLOR": "1"}, "baseline_match": "^[^ ]+:\\d+:"},
    ]}, "x")
    tests, lint = config.gates
    assert tests.argv == ["python", "-m", "pytest", "-q", "a b"] and tests.timeout == 600 and not tests.baseline
    assert tests.when == [] and tests.baseline_ignore_numbers
    assert lint.argv == ["ruff", "check", "."] and lint.when == ["*.py"] and lint.timeout == 120
    assert config.gates_budget == 600 + 240 + 60


@pytest.mark.parametrize("gate, key, words", [
    ({"name": "t"}, "gates[0] ('t').run", "required"),
    ({"name": "t", "run": ""}, "gates[0] ('t').run", "non-empty command line"),
    ({"name": "t", "run": "a 'b"}, "gates[0] ('t').run", "splits like a shell"),
    ({"name": "t", "run": []}, "gates[0] ('t').run", "non-empty list"),
    ({"name": "t", "run": 7}, "gates[0] ('t').run", "command line string or a list"),
    ({"name": "t", "run": "x", "timeout": -3}, "gates[0] ('t').timeout", "zero or negative"),
    ({"name": "t", "run": "x", "timeout": "soon"}, "gates[0] ('t').timeout", "duration"),
    ({"name": "t", "run": "x", "env": {"A": 1}}, "gates[0] ('t').env.A", "string"),
    ({"name": "t", "run": "x", "when": ["[oops"]}, "gates[0] ('t').when", "valid globs"),
    ({"name": "t", "run": "x", "when": 3}, "gates[0] ('t').when", "list of globs"),
    ({"name": "t", "run": "x", "baseline": "yes"}, "gates[0] ('t').baseline", "boolean"),
    ({"name": "t", "run": "x", "baseline_match": "(["}, "gates[0] ('t').baseline_match", "regular expression"),
    ({"name": "t", "run": "x", "baseline_ignore_numbers": 1}, "gates[0] ('t').baseline_ignore_numbers", "boolean"),
    ({"name": "t", "run": "x", "shell": True}, "gates[0] ('t').shell", "unknown key"),
    ({"name": "bad name", "run": "x"}, "gates[0] ('bad name').name", "pattern"),
    ({"name": "diff.mine", "run": "x"}, "gates[0] ('diff.mine').name", "not starting with 'diff.'"),
])
def test_gate_errors_name_the_key(gate, key, words) -> None:
    text = error_of({"gates": [gate]})
    assert f"{key}:" in text and words in text, text


def test_gate_names_must_be_unique() -> None:
    text = error_of({"gates": [{"name": "t", "run": "a"}, {"name": "t", "run": "b"}]})
    assert "gates:" in text and "repeated: t" in text


def test_gates_must_be_a_list_of_tables() -> None:
    assert "gates:" in error_of({"gates": {"name": "t", "run": "x"}})


# --- [diff] ------------------------------------------------------------------------------

def test_diff_defaults_and_values() -> None:
    d = Config().diff
    assert (d.enabled, d.require_change, d.max_lines, d.max_files, d.forbidden, d.secrets) == (
        True, True, None, None, [], True)
    d = validate_config({"diff": {"max_lines": 400, "max_files": 20, "forbidden": ".github/workflows/**",
                                  "secrets_allow": ["tests/fixtures/**"], "size_ignore": ["*.lock"]}}, "x").diff
    assert (d.max_lines, d.max_files, d.forbidden, d.secrets_allow, d.size_ignore) == (
        400, 20, [".github/workflows/**"], ["tests/fixtures/**"], ["*.lock"])


@pytest.mark.parametrize("diff, key, words", [
    ({"max_lines": 0}, "diff.max_lines", "greater than or equal to 1"),
    ({"max_lines": -10}, "diff.max_lines", "greater than or equal to 1"),
    ({"max_files": "10"}, "diff.max_files", "integer"),
    ({"max_files": 2.5}, "diff.max_files", "integer"),
    ({"forbidden": [""]}, "diff.forbidden", "not a glob"),
    ({"forbidden": ["a/[b"]}, "diff.forbidden", "unclosed ["),
    ({"secrets": "off"}, "diff.secrets", "boolean"),
    ({"enabled": 0}, "diff.enabled", "boolean"),
    ({"secrets_allow": [1]}, "diff.secrets_allow", "list of globs"),
    ({"max_line": 5}, "diff.max_line", "unknown key (not a setting of [diff]"),
])
def test_diff_errors_name_the_key(diff, key, words) -> None:
    text = error_of({"diff": diff})
    assert f"{key}:" in text and words in text, text


def test_several_errors_are_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text('[diff]\nmax_lines = 0\n\n[[gates]]\nname = "t"\nrun = ""\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert "diff.max_lines" in str(info.value) and "gates[0] ('t').run" in str(info.value)


def test_a_huge_duration_is_a_config_error_not_an_overflow():
    """Issue 17 item 18: tracker.timeout = "99999999999999999999h" ended in OverflowError."""
    import pytest as _pytest

    from beads_runner.config import validate_config
    from beads_runner.errors import ConfigError

    with _pytest.raises(ConfigError) as err:
        validate_config({"tracker": {"timeout": "99999999999999999999h"}}, ".beads-runner.toml")
    assert "tracker.timeout: must be a duration of at most 30 days" in err.value.message
