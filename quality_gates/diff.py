"""Diff gates: checks on the change itself (against the merge-base with the target), not on what it does.

- `diff.nonempty`  the change touches at least one file (outside the forbidden paths)
- `diff.size`      at most `max_lines` changed lines (added + deleted) and `max_files` files
- `diff.paths`     no file under a forbidden path (`.beads/**`, `.beads-runner/**`, `.git/**` and more)
- `diff.secrets`   no added line or file that looks like a secret (private keys, .env files, tokens)
- `diff.protected` no change to the runner's or the agent's own configuration, nor to .gitattributes
- `diff.content`   no symlink out of the repository, no submodule, no binary (unless allowed)

What is read is what git would commit, not what git's diff would show: `--text` (so .gitattributes
cannot hide a file), every byte of a new file (NUL bytes or not, any size), symlinks never followed.

Committed and uncommitted work count alike; untracked files count, ignored ones do not.
"""

from __future__ import annotations

import math
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
# What configures the runner, the agent or how git reads files: a change to these never lands on its
# own (it would run the agent's gate command and permissions at the next start, or hide lines from
# the size and secret checks). The gates' own files are the yardstick's (quality_gates/yardstick.py).
PROTECTED = (".beads-runner.toml", "opencode.json", "opencode.jsonc", ".opencode/**", ".gitattributes",
             "**/.gitattributes")

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
    # Alone, without its key id: 40 base64 characters standing on their own (see _is_secret).
    ("AWS secret access key", re.compile(r"(?<![A-Za-z0-9/+=_-])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=_-])")),
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
            if _is_secret(kind, m.group(0)):
                found.append((kind, redact(m.group(0))))
    return found


def _is_secret(kind: str, token: str) -> bool:
    """A match of a loose pattern that is really random: an AWS secret access key is 40 characters
    of base64 with upper and lower case and digits (a / or +, or several digits), not a hex digest,
    not AWS's documented example, and as varied as random text (entropy); names and words are not."""
    if kind != "AWS secret access key":
        return True
    if not (re.search(r"[A-Z]", token) and re.search(r"[a-z]", token) and re.search(r"[0-9]", token)):
        return False
    if "EXAMPLE" in token or re.fullmatch(r"[0-9a-fA-F]+", token):
        return False
    if "/" not in token and "+" not in token and sum(c.isdigit() for c in token) < 4:
        return False  # a long identifier (CamelCase, a digit or two) rather than random base64
    counts = {c: token.count(c) for c in set(token)}
    entropy = -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())
    return entropy >= 4.2


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
              forbidden: Sequence[str] = DEFAULT_FORBIDDEN, target: str | None = None,
              max_bytes: int | None = None) -> DiffGate:
    excluded = [*forbidden, *validate_globs(ignore)]

    def check(change: Change) -> tuple[list[str], str]:
        files = _counted(change, excluded)
        lines = sum(f.added + f.deleted for f in files)
        size = f"{len(files)} file(s), {lines} line(s) changed"
        problems = []
        if max_bytes is not None:
            # Bytes as well as lines: one 100 MB line is one line. New files count whole; changed
            # ones by their added lines.
            added = change.added_lines()
            counted = sum(f.size if f.status == "A" and f.path not in added
                          else sum(len(t.encode("utf-8", "surrogateescape")) + 1 for _, t in added.get(f.path, []))
                          for f in files if f.status != "D")
            size += f", {counted} byte(s) added"
            if counted > max_bytes:
                problems.append(f"{counted} bytes added; at most {max_bytes} allowed")
        if max_files is not None and len(files) > max_files:
            problems.append(f"{len(files)} files changed; at most {max_files} allowed")
        if max_lines is not None and lines > max_lines:
            problems.append(f"{lines} lines changed; at most {max_lines} allowed")
        if problems:
            biggest = sorted(files, key=lambda f: f.added + f.deleted, reverse=True)[:10]
            problems += [f"  {f.path}: +{f.added} -{f.deleted}" for f in biggest]
            limits = f"{max_files or '-'} files, {max_lines or '-'} lines, {max_bytes or '-'} bytes"
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


def protected_gate(target: str | None = None) -> DiffGate:
    def check(change: Change) -> tuple[list[str], str]:
        bad = [f"{f.path} ({'deleted' if f.status == 'D' else 'changed'})" for f in change.files
               if matches(f.path, PROTECTED)]
        if bad:
            return bad, (f"the change rewrites the runner's or the agent's own configuration "
                         f"({', '.join(b.split(' (')[0] for b in bad)}): only a person may land that")
        return [], ""
    return DiffGate("diff.protected", check, target)


# What the gates themselves leave in a worktree that is not ignored (Python's bytecode, coverage
# data): binary, but never committed (the runner commits only the agent's files), so not refused.
GATE_BYPRODUCTS = ("__pycache__/", "*.pyc", ".coverage", ".coverage.*")


def content_gate(binary_allow: Sequence[str] = (), target: str | None = None) -> DiffGate:
    """What git would commit that no review of lines shows: a symlink out of the repository, a
    submodule entry, binary content (unless `binary_allow` names its path)."""
    allowed = validate_globs([*GATE_BYPRODUCTS, *binary_allow])

    def check(change: Change) -> tuple[list[str], str]:
        problems = []
        for f in change.files:
            if f.kind == "symlink" and _points_outside(f.path, f.link):
                problems.append(f"{f.path}: a symlink pointing outside the repository ({f.link})")
            elif f.kind == "submodule":
                problems.append(f"{f.path}: a submodule (a nested git repository)")
            elif f.kind == "other":
                problems.append(f"{f.path}: neither a file, a directory nor a symlink")
            elif f.kind == "file" and f.binary and not matches(f.path, allowed):
                problems.append(f"{f.path}: binary content ({f.size} bytes); allow it with diff.binary_allow")
        if problems:
            return problems, f"{len(problems)} path(s) a person must land: {'; '.join(problems[:3])}"
        return [], ""
    return DiffGate("diff.content", check, target)


def _points_outside(path: str, link: str) -> bool:
    if link.startswith("/"):
        return True
    depth = 0
    for part in (PurePosixPath(path).parent / link).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


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
        # New files: all of their content, whatever their size or bytes (chunks overlap: say each once).
        seen: set[str] = set()
        for path, first_line, text in change.untracked_chunks():
            if matches(path, allowed):
                continue
            for kind, pattern in SECRET_PATTERNS:
                for m in pattern.finditer(text):
                    if not _is_secret(kind, m.group(0)):
                        continue
                    problem = f"{path}:{first_line + text.count(chr(10), 0, m.start())}: {kind} ({redact(m.group(0))})"
                    if problem not in seen:
                        seen.add(problem)
                        problems.append(problem)
        if problems:
            return problems, f"{len(problems)} secret(s) in the change; remove them (and rotate them)"
        return [], ""
    return DiffGate("diff.secrets", check, target)


def diff_gates(*, require_change: bool = True, max_lines: int | None = None, max_files: int | None = None,
               size_ignore: Sequence[str] = (), forbidden: Sequence[str] = (), secrets: bool = True,
               secrets_allow: Sequence[str] = (), target: str | None = None, max_bytes: int | None = None,
               binary_allow: Sequence[str] = ()) -> list[DiffGate]:
    """The diff gates for one configuration; `forbidden` is added to DEFAULT_FORBIDDEN."""
    all_forbidden = list(dict.fromkeys([*DEFAULT_FORBIDDEN, *forbidden]))
    gates = []
    if require_change:
        gates.append(nonempty_gate(all_forbidden, target))
    gates.append(paths_gate(all_forbidden, target))
    gates.append(protected_gate(target))
    gates.append(content_gate(binary_allow, target))
    if max_lines is not None or max_files is not None or max_bytes is not None:
        gates.append(size_gate(max_lines, max_files, size_ignore, all_forbidden, target, max_bytes))
    if secrets:
        gates.append(secrets_gate(secrets_allow, target))
    return gates
