"""Test integrity: the change must not weaken the tests that already exist on the target.

`diff.tests` fails when the change deletes an existing test (or test file), skips it or marks it
expected to fail (unittest `@skip*`/`skipTest`/`expectedFailure`, pytest `skip`/`skipif`/`xfail`
markers and calls, JS `it.skip`/`test.skip`/`describe.skip`/`xit`/`.todo`/`.only`), or removes
assertions from it (Python: compared per test function, by AST). New tests are the change's own.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from quality_gates.change import Change
from quality_gates.diff import DiffGate
from quality_gates.yardstick import COLLECTED_GATE, TESTS_GATE, Finding, base_text, new_text

JS_SUFFIXES = (".js", ".jsx", ".ts", ".tsx", ".mjs", ".cjs")


def is_python_test_file(path: str) -> bool:
    p = PurePosixPath(path)
    if p.suffix != ".py" or p.name == "conftest.py":
        return False
    return p.name.startswith("test_") or p.stem.endswith("_test") or "tests" in p.parts or "test" in p.parts


def is_js_test_file(path: str) -> bool:
    p = PurePosixPath(path)
    if not p.name.endswith(JS_SUFFIXES):
        return False
    return bool(re.search(r"\.(test|spec)\.[cm]?[jt]sx?$", p.name)) or "__tests__" in p.parts


# --- Python ------------------------------------------------------------------------------------------

_SKIP_NAMES = {"skip", "skipIf", "skipUnless", "expectedFailure", "skipif", "xfail", "skipTest", "SkipTest"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _is_skip(node: ast.AST) -> bool:
    name = _dotted(node)
    return bool(name) and name.split(".")[-1] in _SKIP_NAMES


def _is_assertion(node: ast.AST) -> bool:
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, ast.Call):
        last = _dotted(node.func).split(".")[-1]
        return last.startswith(("assert", "fail")) or last in ("raises", "warns", "expect", "approx") or \
            last.startswith("assert_")
    return False


class PyTest:
    """One test function: its assertions and the skip/xfail marks on it (its class's and the module's too)."""

    def __init__(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, inherited_skips: int):
        self.assertions = sum(1 for n in ast.walk(fn) if _is_assertion(n))
        decorators = sum(1 for d in fn.decorator_list if _is_skip(d))
        calls = sum(1 for n in ast.walk(fn) if isinstance(n, ast.Call) and _is_skip(n))
        raises = sum(1 for n in ast.walk(fn) if isinstance(n, ast.Raise) and n.exc is not None and _is_skip(n.exc))
        self.skips = inherited_skips + decorators + calls + raises


def _module_skips(tree: ast.Module) -> int:
    count = 0
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            count += sum(1 for n in ast.walk(node.value) if _is_skip(n))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and _is_skip(node.value):
            count += 1  # pytest.skip(..., allow_module_level=True)
        elif isinstance(node, ast.If):
            count += sum(1 for n in ast.walk(node) if isinstance(n, ast.Call) and _is_skip(n))
            count += sum(1 for n in ast.walk(node) if isinstance(n, ast.Raise) and n.exc is not None
                         and _is_skip(n.exc) and not isinstance(n.exc, ast.Call))
    return count


def python_tests(text: str) -> dict[str, PyTest] | None:
    """`Class.test_name` / `test_name` → PyTest; None if the file does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    module = _module_skips(tree)
    tests: dict[str, PyTest] = {}

    def visit(body: list[ast.stmt], prefix: str, skips: int) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                tests[prefix + node.name] = PyTest(node, skips)
            elif isinstance(node, ast.ClassDef):
                own = sum(1 for d in node.decorator_list if _is_skip(d))
                own += sum(1 for n in node.body if isinstance(n, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets) and any(
                    _is_skip(x) for x in ast.walk(n.value)))
                # setUp/setUpClass that skip every test of the class
                own += sum(1 for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                           and n.name in ("setUp", "setUpClass", "setup_method", "setup_class")
                           for x in ast.walk(n) if isinstance(x, ast.Call) and _is_skip(x))
                visit(node.body, f"{prefix}{node.name}.", skips + own)

    visit(tree.body, "", module)
    return tests


def python_findings(path: str, before: str, after: str | None) -> list[Finding]:
    old = python_tests(before)
    if not old:
        return []
    if after is None:
        return [Finding(path, f"test file deleted ({len(old)} test(s))")]
    new = python_tests(after)
    if new is None:
        return []  # a syntax error: the test gate fails on it anyway
    out: list[Finding] = []
    for name, test in old.items():
        now = new.get(name)
        if now is None:
            out.append(Finding(path, f"test {name} deleted"))
            continue
        if now.skips > test.skips:
            out.append(Finding(path, f"test {name} skipped or marked expected-to-fail"))
        if now.assertions < test.assertions:
            out.append(Finding(path, f"assertions removed from test {name} ({test.assertions} → {now.assertions})"))
    return out


# --- JavaScript / TypeScript ------------------------------------------------------------------------

_JS_SKIP = re.compile(r"\b(?:(?:it|test|describe|suite|context)\s*\.\s*(?:skip|todo|only|failing)\b"
                      r"|(?:xit|xtest|xdescribe|xcontext|fit|fdescribe)\s*\()")
_JS_TEST = re.compile(r"(?<![.\w])(?:it|test)\s*(?:\.\s*\w+\s*)?\(")


def js_findings(path: str, before: str, after: str | None) -> list[Finding]:
    tests_before = len(_JS_TEST.findall(before))
    if after is None:
        return [Finding(path, f"test file deleted ({tests_before} test(s))")] if tests_before else []
    out: list[Finding] = []
    marks_before = Counter(re.sub(r"\s+", "", m) for m in _JS_SKIP.findall(before))
    marks_after = Counter(re.sub(r"\s+", "", m) for m in _JS_SKIP.findall(after))
    added = marks_after - marks_before
    if added:
        shown = ", ".join(f"{k.rstrip('(')} ×{n}" for k, n in sorted(added.items()))
        out.append(Finding(path, f"tests skipped, focused or marked todo/failing: {shown}"))
    tests_after = len(_JS_TEST.findall(after))
    if tests_after < tests_before:
        out.append(Finding(path, f"fewer tests ({tests_before} → {tests_after})"))
    asserts_before = len(re.findall(r"\b(?:expect|assert)\b", before))
    asserts_after = len(re.findall(r"\b(?:expect|assert)\b", after))
    if asserts_after < asserts_before:
        out.append(Finding(path, f"assertions removed ({asserts_before} → {asserts_after})"))
    return out


# --- the detector ------------------------------------------------------------------------------------

def test_findings(change: Change) -> list[Finding]:
    """Existing tests the change deletes, skips or weakens (tests new in the change are free)."""
    findings: list[Finding] = []
    for f in change.files:
        if f.status == "A" or f.binary:
            continue
        python, js = is_python_test_file(f.path), is_js_test_file(f.path)
        if not (python or js):
            continue
        before = base_text(change, f.path)
        if before is None:
            continue
        after = None if f.status == "D" else new_text(change, f.path)
        findings += python_findings(f.path, before, after) if python else js_findings(f.path, before, after)
    return findings


test_findings.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def tests_gate(*, label: str = "tests-change", target: str | None = None) -> DiffGate:
    def check(change: Change) -> tuple[list[str], str]:
        found = [str(f) for f in test_findings(change)]
        if found:
            return found, (f"the change deletes, skips or weakens {len(found)} existing test(s); a person must "
                           f"review it (the issue label {label!r} allows it)")
        return [], ""

    return DiffGate(TESTS_GATE, check, target, what="existing tests deleted, skipped or weakened")


__all__: Sequence[str] = ("TESTS_GATE", "is_js_test_file", "is_python_test_file", "python_tests", "test_findings",
                          "tests_gate")


# --- fewer tests collected than on the target ---------------------------------------------------------

def _touches_tests(change: Change) -> bool:
    return any(f.status != "A" and (is_python_test_file(f.path) or is_js_test_file(f.path)) for f in change.files)


def _counts_at_base(gate, inp, change: Change, cache: Path | None, cancel, log_dir):
    """The gate's test counts on the target (the change's merge-base), cached per commit and command."""
    import hashlib
    import json as _json

    from quality_gates.change import repo_toplevel, temporary_worktree
    from quality_gates.gates import run_command
    from quality_gates.testcounts import TestCounts, from_junit, parse_counts

    key = hashlib.sha256(_json.dumps([change.base, gate.name, gate.argv, gate.junit]).encode()).hexdigest()[:24]
    path = cache / f"{key}.json" if cache is not None else None
    if path is not None and path.exists():
        try:
            return TestCounts.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError:
            pass
    rel = inp.workdir.resolve().relative_to(repo_toplevel(inp.workdir).resolve())
    with temporary_worktree(inp.repo_root, change.base) as tree:
        log_path = (log_dir / f"gate-{gate.name}.target-count.log") if log_dir else None
        out = run_command(gate.argv, tree / rel, timeout=gate.timeout, env=gate.env, cancel=cancel, log_path=log_path)
        counts = from_junit(tree / rel / gate.junit) if gate.junit else parse_counts(out.output)
    if counts is not None and path is not None and not out.cancelled and not out.timed_out:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(counts.model_dump_json(), encoding="utf-8")
    return counts


def collected_check(report, gates, inp, *, label: str = "tests-change", cache: Path | None = None,
                    cancel=None, log_dir: Path | None = None):
    """`diff.tests-collected`: fewer tests collected than the same gate collects on the target.

    Asked only when the change modifies or deletes an existing test file (otherwise a shrinking
    suite shows up as errors, or in the yardstick's config files); the target's count is taken
    once per target commit and cached. None when there is nothing to compare."""
    import time

    from quality_gates.change import ChangeError
    from quality_gates.report import GateReport

    counted = {r.name: r for r in report.reports if r.tests is not None}
    by_name = {g.name: g for g in gates if getattr(g, "argv", None) and g.name in counted}
    if not by_name:
        return None
    try:
        change = inp.change()
    except ChangeError:
        return None
    if not _touches_tests(change):
        return None
    started = time.monotonic()
    findings = []
    for name, gate in by_name.items():
        try:
            base = _counts_at_base(gate, inp, change, cache, cancel, log_dir)
        except (ChangeError, ValueError, OSError):
            continue
        now = counted[name].tests
        if base is not None and now.collected < base.collected:
            findings.append(f"{name}: {now.collected} test(s) collected, {base.collected} on {change.target} "
                            f"at {change.base[:10]}")
    status = "fail" if findings else "pass"
    reason = (f"fewer tests collected than on the target; a person must review it (the issue label {label!r} "
              "allows it)") if findings else ""
    return GateReport(name=COLLECTED_GATE, status=status, reason=reason, findings=findings,
                      duration_s=time.monotonic() - started, output_tail="\n".join(findings))
