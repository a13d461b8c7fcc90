"""Test counts from a test gate's output: pytest's summary line, unittest's `Ran N tests`, JUnit XML.

A gate whose output shows it is a test run gets `GateReport.tests`; the report and the commit
trailer carry them, and a test run that ran no test fails (a gate that tests nothing proves nothing).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from pydantic import BaseModel


class TestCounts(BaseModel):
    __test__ = False  # not a pytest test class

    collected: int = 0
    passed: int = 0
    failed: int = 0  # failures and errors
    skipped: int = 0  # skipped, xfailed, expected failures
    duration_s: float = 0.0
    source: str = ""  # "pytest", "unittest" or "junit"

    def line(self) -> str:
        return (f"collected={self.collected} passed={self.passed} failed={self.failed} skipped={self.skipped} "
                f"duration={self.duration_s:.1f}s")


_PYTEST_LINE = re.compile(r"^=+ (?P<body>.*?) in (?P<secs>[\d.]+)s(?: \([^)]*\))? =+\s*$", re.M)
_PYTEST_ITEM = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)")
_PYTEST_QUIET = re.compile(r"^(?P<body>(?:\d+ \w+(?:, )?)+) in (?P<secs>[\d.]+)s\s*$", re.M)
_UNITTEST_RAN = re.compile(r"^Ran (\d+) tests? in ([\d.]+)s\s*$", re.M)
_UNITTEST_END = re.compile(r"^(OK|FAILED)(?: \((?P<body>[^)]*)\))?\s*$", re.M)


def _pytest(output: str) -> TestCounts | None:
    matches = list(_PYTEST_LINE.finditer(output)) or list(_PYTEST_QUIET.finditer(output))
    for m in reversed(matches):
        body = m.group("body")
        items = _PYTEST_ITEM.findall(body)
        if not items and "no tests ran" not in body:
            continue
        n: dict[str, int] = {}
        for count, word in items:
            word = {"error": "errors", "warning": "warnings"}.get(word, word)
            n[word] = n.get(word, 0) + int(count)
        passed = n.get("passed", 0) + n.get("xpassed", 0)
        failed = n.get("failed", 0) + n.get("errors", 0)
        skipped = n.get("skipped", 0) + n.get("xfailed", 0)
        return TestCounts(collected=passed + failed + skipped, passed=passed, failed=failed, skipped=skipped,
                          duration_s=float(m.group("secs")), source="pytest")
    return None


def _unittest(output: str) -> TestCounts | None:
    ran = list(_UNITTEST_RAN.finditer(output))
    if not ran:
        return None
    last = ran[-1]
    collected, secs = int(last.group(1)), float(last.group(2))
    fields: dict[str, int] = {}
    end = _UNITTEST_END.search(output, last.end())
    if end and end.group("body"):
        for part in end.group("body").split(","):
            key, _, value = part.strip().partition("=")
            if value.strip().isdigit():
                fields[key] = int(value)
    failed = fields.get("failures", 0) + fields.get("errors", 0) + fields.get("unexpected successes", 0)
    skipped = fields.get("skipped", 0) + fields.get("expected failures", 0)
    return TestCounts(collected=collected, passed=max(0, collected - failed - skipped), failed=failed,
                      skipped=skipped, duration_s=secs, source="unittest")


def from_junit(path: Path) -> TestCounts | None:
    """Counts from a JUnit XML file (`<testsuites>` or one `<testsuite>`); None if unreadable."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    suites = [s for s in suites if not any(c.tag == "testsuite" for c in s)]  # leaves only, no double count
    total = failed = skipped = 0
    secs = 0.0
    for s in suites:
        total += int(s.get("tests", 0) or 0)
        failed += int(s.get("failures", 0) or 0) + int(s.get("errors", 0) or 0)
        skipped += int(s.get("skipped", 0) or s.get("disabled", 0) or 0)
        try:
            secs += float(s.get("time", 0) or 0)
        except ValueError:
            pass
    return TestCounts(collected=total, passed=max(0, total - failed - skipped), failed=failed, skipped=skipped,
                      duration_s=secs, source="junit")


def parse_counts(output: str) -> TestCounts | None:
    """The counts of the last test run in `output` (pytest's or unittest's), None if it shows none."""
    return _pytest(output) or _unittest(output)
