"""Diff gates: checks on the change itself (against the merge-base with the target), not on what it does.

- `diff.nonempty`  the change touches at least one file (outside the forbidden paths)
- `diff.size`      at most `max_lines` changed lines (added + deleted) and `max_files` files
- `diff.paths`     no file under a forbidden path (`.beads/**`, `.beads-runner/**`, `.git/**` and more)
- `diff.secrets`   no added line or file that looks like a secret (private keys, .env files, tokens)

Committed and uncommitted work count alike; untracked files count, ignored ones do not.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from quality_gates.change import Change, ChangeError
from quality_gates.gates import GateInput
from quality_gates.globs import matches, validate_globs
from quality_gates.report import GateReport

DEFAULT_FORBIDDEN = (".beads/**", ".beads-runner/**", ".git/**")

# (what it is, pattern). Patterns are written so that this file does not match them itself.
SECRET_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("private key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")),
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b(?<!EXAMPLE)")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("GitHub fine-grained token", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{40,}\b")),
    ("Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("Slack webhook", re.compile(r"https://hooks\.slack\.com/services/T[A-Za-z0-9]+/B[A-Za-z0-9]+/[A-Za-z0-9]+")),
    ("Stripe live key", re.compile(r"\b[rs]k_live_[0-9A-Za-z]{20,}\b")),
    ("Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
)
_ENV_OK_SUFFIXES = (".example", ".sample", ".template", ".dist", ".defaults")
_KEY_FILES = {"id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"}
_KEYSTORE_SUFFIXES = (".p12", ".pfx")


def secret_file_kind(path: str) -> str | None:
    """Why a file's name alone makes it a secret (None if it does not)."""
    name = PurePosixPath(path).name
    if (name == ".env" or name.startswith(".env.")) and not name.endswith(_ENV_OK_SUFFIXES):
        return "an environment file"
    if name in _KEY_FILES:
        return "an SSH private key file"
    if name.endswith(_KEYSTORE_SUFFIXES):
        return "a key store"
    return None


def find_secrets(text: str) -> list[tuple[str, str]]:
    """(kind, redacted match) for every secret-looking token in `text`."""
    found = []
    for kind, pattern in SECRET_PATTERNS:
        for m in pattern.finditer(text):
            found.append((kind, redact(m.group(0))))
    return found


def redact(token: str) -> str:
    if token.startswith("-----"):
        return token
    return token[:4] + "…" if len(token) > 8 else "…"


class DiffGate:
    """One check over the change. `check(change) -> (problems, summary)`: no problems passes."""

    def __init__(self, name: str, check: Callable[[Change], tuple[list[str], str]], target: str | None = None,
                 what: str = ""):
        self.name = name
        self.check = check
        self.target = target
        self.what = what

    def __repr__(self) -> str:
        return f"DiffGate({self.name!r})"

    def run(self, inp: GateInput | Path, *, cancel: threading.Event | None = None,
            log_dir: Path | None = None) -> GateReport:
        inp = GateInput.of(inp)
        started = time.monotonic()
        try:
            problems, summary = self.check(inp.change(self.target))
        except ChangeError as exc:
            return GateReport(name=self.name, status="error", duration_s=time.monotonic() - started,
                              reason=f"cannot read the change: {exc}")
        return GateReport(name=self.name, status="fail" if problems else "pass", reason=summary,
                          findings=problems, duration_s=time.monotonic() - started,
                          output_tail="\n".join(problems[:200]))


def _counted(change: Change, excluded: Sequence[str]):
    return [f for f in change.files if not matches(f.path, excluded)]


def nonempty_gate(forbidden: Sequence[str] = DEFAULT_FORBIDDEN, target: str | None = None) -> DiffGate:
    def check(change: Change) -> tuple[list[str], str]:
        if _counted(change, forbidden):
            return [], ""
        return ["no file changed"], f"the change is empty: nothing differs from {change.target} ({change.base[:10]})"
    return DiffGate("diff.nonempty", check, target)


def size_gate(max_lines: int | None = None, max_files: int | None = None, ignore: Sequence[str] = (),
              forbidden: Sequence[str] = DEFAULT_FORBIDDEN, target: str | None = None) -> DiffGate:
    excluded = [*forbidden, *validate_globs(ignore)]

    def check(change: Change) -> tuple[list[str], str]:
        files = _counted(change, excluded)
        lines = sum(f.added + f.deleted for f in files)
        size = f"{len(files)} file(s), {lines} line(s) changed"
        problems = []
        if max_files is not None and len(files) > max_files:
            problems.append(f"{len(files)} files changed; at most {max_files} allowed")
        if max_lines is not None and lines > max_lines:
            problems.append(f"{lines} lines changed; at most {max_lines} allowed")
        if problems:
            biggest = sorted(files, key=lambda f: f.added + f.deleted, reverse=True)[:10]
            problems += [f"  {f.path}: +{f.added} -{f.deleted}" for f in biggest]
            limits = f"{max_files or '-'} files, {max_lines or '-'} lines"
            return problems, f"the change is too big: {size} (limits: {limits})"
        return [], size
    return DiffGate("diff.size", check, target)


def paths_gate(forbidden: Sequence[str] = DEFAULT_FORBIDDEN, target: str | None = None) -> DiffGate:
    patterns = validate_globs(forbidden)

    def check(change: Change) -> tuple[list[str], str]:
        bad = [f"{f.path} ({'deleted' if f.status == 'D' else 'changed'})" for f in change.files
               if matches(f.path, patterns)]
        if bad:
            return bad, f"the change touches {len(bad)} forbidden path(s) ({', '.join(patterns)})"
        return [], ""
    return DiffGate("diff.paths", check, target)


def secrets_gate(allow: Sequence[str] = (), target: str | None = None) -> DiffGate:
    allowed = validate_globs(allow)

    def check(change: Change) -> tuple[list[str], str]:
        problems = []
        for f in change.files:
            if f.status == "A" and not matches(f.path, allowed) and (kind := secret_file_kind(f.path)):
                problems.append(f"{f.path}: {kind}")
        for path, lines in sorted(change.added_lines().items()):
            if matches(path, allowed):
                continue
            for number, text in lines:
                problems += [f"{path}:{number}: {kind} ({shown})" for kind, shown in find_secrets(text)]
        if problems:
            return problems, f"{len(problems)} secret(s) in the change; remove them (and rotate them)"
        return [], ""
    return DiffGate("diff.secrets", check, target)


def diff_gates(*, require_change: bool = True, max_lines: int | None = None, max_files: int | None = None,
               size_ignore: Sequence[str] = (), forbidden: Sequence[str] = (), secrets: bool = True,
               secrets_allow: Sequence[str] = (), target: str | None = None) -> list[DiffGate]:
    """The diff gates for one configuration; `forbidden` is added to DEFAULT_FORBIDDEN."""
    all_forbidden = list(dict.fromkeys([*DEFAULT_FORBIDDEN, *forbidden]))
    gates = []
    if require_change:
        gates.append(nonempty_gate(all_forbidden, target))
    gates.append(paths_gate(all_forbidden, target))
    if max_lines is not None or max_files is not None:
        gates.append(size_gate(max_lines, max_files, size_ignore, all_forbidden, target))
    if secrets:
        gates.append(secrets_gate(secrets_allow, target))
    return gates
