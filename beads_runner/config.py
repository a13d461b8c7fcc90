"""`.beads-runner.toml`: the runner's configuration, validated before anything runs.

Every error names the file, the key and what is allowed. Unknown keys are errors too: a typo
that silently falls back to a default is the worst kind of configuration bug.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from beads_runner.errors import ConfigError

CONFIG_FILE = ".beads-runner.toml"
STATE_DIR = ".beads-runner"
STATE_DB = "state.db"  # the embedded engine's database, in STATE_DIR

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
MAX_DURATION = 30 * 86400.0
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """'30m' → 1800.0. Plain numbers are seconds. Zero and negatives are refused."""
    if isinstance(value, bool):
        raise ValueError("a duration like \"30s\", \"5m\" or \"1h\" (a positive number of s, m or h)")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError("a duration like \"30s\", \"5m\" or \"1h\" (a positive number of s, m or h)")
    if seconds <= 0:
        raise ValueError("a positive duration (\"30s\", \"5m\", \"1h\"); zero or negative is not allowed")
    if seconds > MAX_DURATION:
        # Beyond this, timers overflow (OverflowError from a thread's wait) long before anyone waits.
        raise ValueError(f"a duration of at most {MAX_DURATION / 86400:g} days")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrackerConfig(_Section):
    kind: Literal["bd", "jsonl"] = "bd"
    command: str = "bd"
    actor: str = Field("beads-runner", min_length=1)
    path: str = ".beads/issues.jsonl"  # the jsonl tracker's file, relative to the repo
    poll_interval: Duration = 5.0  # how often `start` asks for ready work (changes in .beads/ wake it sooner)
    timeout: Duration = 60.0  # one bd call


class AgentConfig(_Section):
    kind: Literal["opencode", "command"] = "opencode"
    # opencode only: "run" = one `opencode run` process per session; "server" = one `opencode serve`
    # per runner process, sessions over its HTTP API (no start-up cost per session)
    mode: Literal["run", "server"] = "run"
    command: str | None = None  # opencode: PATH, then node_modules/.bin/opencode. command: required.
    args: list[str] = Field(default_factory=list)  # extra arguments for the executable
    model: str = ""  # provider/model, passed as --model
    timeout: Duration = 1800.0
    stall_timeout: Duration = 300.0
    env: dict[str, str] = Field(default_factory=dict)  # added to the agent's environment
    max_attempts: int = Field(3, ge=1, le=10)  # sessions per run: the first, then fixes fed the gate report
    daily_budget_usd: float | None = Field(None, ge=0)  # spent (UTC day): no new sessions start
    # Directories the agent may write besides its worktree, in the sandbox (its own state, say ~/.claude);
    # opencode's data, cache and state directories are always writable.
    writable: list[str] = Field(default_factory=list)

    @field_validator("mode")
    @classmethod
    def _mode_needs_opencode(cls, value: str, info: ValidationInfo) -> str:
        if value == "server" and info.data.get("kind") == "command":
            raise ValueError('"run" when agent.kind is "command" (the server mode is opencode\'s)')
        return value

    @field_validator("model")
    @classmethod
    def _model_shape(cls, value: str) -> str:
        if value and "/" not in value:
            raise ValueError('"provider/model", for example "anthropic/claude-sonnet-4-5"')
        return value


class RetryConfig(_Section):
    attempts: int = Field(3, ge=1, le=20)  # tries in all, the first included
    backoff: Duration = 1.0  # wait before the second try
    backoff_factor: float = Field(2.0, ge=1.0)
    backoff_max: Duration = 30.0


class HatchetConfig(_Section):
    """engine.kind = "hatchet": where the engine is, and what `beads-runner hatchet up` runs."""

    # The directory with hatchet-lite, hatchet-migrate and hatchet-admin (default: the checkout's
    # .tools/bin, filled by `make tools`, then PATH).
    bin_dir: str | None = None
    # The PostgreSQL `hatchet up` gives the engine; unset: a cluster it creates and owns.
    database_url: str | None = None
    # Prefix of the workflow's name on the engine: repositories sharing one engine must differ.
    # Unset: derived from the repository's first commit, the same in every clone of it.
    namespace: str | None = Field(None, pattern=r"^[a-z0-9_]{1,40}$")


class EngineConfig(_Section):
    kind: Literal["local", "hatchet"] = "local"
    hatchet: HatchetConfig = Field(default_factory=HatchetConfig)
    max_sessions: int = Field(3, ge=1, le=64)
    max_runs: int = Field(8, ge=1, le=256)  # runs in flight at once (steps other than process)
    # Issues claimed beyond the free sessions, so the next one is ready (claimed, checked) the moment a
    # session ends instead of after a round of tracker calls. 0: claim only for a free session.
    prefetch: int = Field(1, ge=0, le=16)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    step_timeout: Duration = 3600.0  # check-deps and commit; process uses agent.timeout, verify the gates'
    sessions_per_minute: int | None = Field(None, ge=1)  # hatchet: rate limit on session starts
    grace_period: Duration = 30.0  # on SIGTERM, how long running sessions may go on before being stopped


class LandConfig(_Section):
    target: str = Field("main", min_length=1)
    push: bool = False  # also push the target to `remote` (many machines)
    remote: str = "origin"


def _command_line(value: Any) -> Any:
    """`run`: a command line (split like a shell would, never run by one) or an argv list."""
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"a command line that splits like a shell would ({exc})") from exc
        if not argv:
            raise ValueError("a non-empty command line")
        return value
    if isinstance(value, list):
        if not value or not all(isinstance(a, str) for a in value) or not value[0]:
            raise ValueError("a non-empty list of strings (the argv), or a command line string")
        return value
    raise ValueError("a command line string or a list of strings (the argv)")


def _globs(value: Any) -> Any:
    """A glob or a list of globs, each checked to compile."""
    from quality_gates.globs import compile_glob

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('a list of globs like ["src/**/*.py", "*.toml"]')
    for pattern in value:
        try:
            compile_glob(pattern)
        except ValueError as exc:
            raise ValueError(f"a list of valid globs; {exc}") from None
    return value


def _regex(value: Any) -> Any:
    if value is None:
        return value
    if not isinstance(value, str):
        raise ValueError("a regular expression (a string)")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"a valid regular expression ({exc})") from None
    return value


Globs = Annotated[list[str], BeforeValidator(_globs)]
RESERVED_GATE_PREFIX = "diff."  # the diff gates' names


class GateConfig(_Section):
    """One `[[gates]]` entry: a command run (without a shell) in the worktree; exit 0 passes."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    run: Annotated[str | list[str], BeforeValidator(_command_line)]
    timeout: Duration = 600.0
    env: dict[str, str] = Field(default_factory=dict)  # added to the gate's environment
    when: Globs = Field(default_factory=list)  # run only if the change touches a matching file
    baseline: StrictBool = False  # fail only for failures the target does not already have
    baseline_match: Annotated[str | None, BeforeValidator(_regex)] = None  # failure lines (default: all)
    baseline_ignore_numbers: StrictBool = True  # line/column numbers do not tell failures apart
    junit: str | None = Field(None, min_length=1)  # a JUnit XML file the command writes (test counts)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.startswith(RESERVED_GATE_PREFIX):
            raise ValueError(f"a name not starting with {RESERVED_GATE_PREFIX!r} (the diff gates' names)")
        return value

    @property
    def argv(self) -> list[str]:
        return list(self.run) if isinstance(self.run, list) else shlex.split(self.run)

    @property
    def budget(self) -> float:
        """The longest this gate can take: twice its timeout with a baseline run."""
        return self.timeout * (2 if self.baseline else 1)


class DiffConfig(_Section):
    """`[diff]`: checks on the change itself, against the merge-base with the target."""

    enabled: StrictBool = True
    require_change: StrictBool = True  # an empty change fails
    max_lines: StrictInt | None = Field(None, ge=1)  # changed lines (added + deleted); unset: no limit
    max_files: StrictInt | None = Field(None, ge=1)
    size_ignore: Globs = Field(default_factory=list)  # not counted by max_lines/max_files (lock files…)
    forbidden: Globs = Field(default_factory=list)  # added to .beads/**, .beads-runner/**, .git/**
    secrets: StrictBool = True  # no added private key, .env file or token
    secrets_allow: Globs = Field(default_factory=list)  # paths exempt from the secret scan (test fixtures)
    max_bytes: StrictInt | None = Field(None, ge=1)  # bytes added (new files whole, added lines); unset: no limit
    binary_allow: Globs = Field(default_factory=list)  # binary files that may land (e.g. "docs/**/*.png")


LABEL = r"^[A-Za-z0-9_.:/-]+$"


class YardstickConfig(_Section):
    """`[yardstick]`: the target's gates are the measure; a change that moves them never lands on its own.

    A change to what defines or feeds the gates (this config, a script or Makefile target a gate runs,
    test/lint config, CI config, `protected` globs), or one that deletes, skips or weakens existing
    tests, goes to a person, unless the issue carries the label that allows it."""

    enabled: StrictBool = True
    protected: Globs = Field(default_factory=list)  # more files that define or feed the gates
    gates_label: str = Field("gates-change", min_length=1, pattern=LABEL)  # allows a change to the gates
    tests_label: str = Field("tests-change", min_length=1, pattern=LABEL)  # allows fewer/weaker tests


class Config(_Section):
    # How agent sessions and gates are confined (beads_runner/sandbox.py): "auto" and "bwrap" need
    # bubblewrap (`start` refuses without it); "off" runs them unconfined.
    sandbox: Literal["auto", "bwrap", "off"] = "auto"
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    land: LandConfig = Field(default_factory=LandConfig)
    gates: list[GateConfig] = Field(default_factory=list)
    diff: DiffConfig = Field(default_factory=DiffConfig)
    yardstick: YardstickConfig = Field(default_factory=YardstickConfig)

    @field_validator("gates")
    @classmethod
    def _unique_gate_names(cls, gates: list[GateConfig]) -> list[GateConfig]:
        names = [g.name for g in gates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"gate names must be unique; repeated: {', '.join(dupes)}")
        return gates

    @property
    def gates_budget(self) -> float:
        """The longest the gates can take together (baseline runs included), for the verify step's timeout."""
        return sum(g.budget for g in self.gates) + (60.0 if self.diff.enabled else 0.0)


def _key_path(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """('gates', 0, 'timeout') → 'gates[0].timeout' (named by the gate when it has a name)."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            name = node[item].get("name") if isinstance(node, list) and item < len(node) and isinstance(
                node[item], dict) else None
            parts[-1] = f"{parts[-1]}[{item}]" + (f" ({name!r})" if name else "")
        else:
            parts.append(str(item))
        try:
            node = node[item]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts)


def _describe(error: dict[str, Any], data: dict[str, Any]) -> str:
    key = _key_path(tuple(error["loc"]), data)
    if error["type"] == "extra_forbidden":
        section = ".".join(str(p) for p in error["loc"][:-1] if not isinstance(p, int)) or "top level"
        return f"{key}: unknown key (not a setting of [{section}]; check its spelling in the README)"
    message = error["msg"]
    message = message.removeprefix("Value error, ")
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    if error["type"] == "literal_error":
        message = message.replace("Input should be", "must be")
    elif error["type"] == "value_error":
        message = f"must be {message}"
    return f"{key}: {message}{shown}"


def validate_config(data: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e, data) for e in exc.errors()]
        raise ConfigError(
            f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems),
            fix=f"edit {source} (`beads-runner init --print` shows every key with its default)",
        ) from None


def load_config(repo: Path) -> Config:
    """Read `<repo>/.beads-runner.toml`; a missing file means all defaults."""
    path = repo / CONFIG_FILE
    if not path.exists():
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", fix=f"make {path} a readable UTF-8 file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", fix=f"correct the syntax of {path}") from None
    return validate_config(data, str(path))
