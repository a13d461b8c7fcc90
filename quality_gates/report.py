"""What a gate run found, in a shape people, commit trailers and scripts can all read."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, Field

from quality_gates.testcounts import TestCounts

GateStatus = Literal["pass", "fail", "error", "skipped"]


class GateReport(BaseModel):
    name: str
    status: GateStatus
    duration_s: float = 0.0
    exit_code: int | None = None
    reason: str = ""  # one line: why it did not pass, was skipped, or passed only thanks to the baseline
    output_tail: str = ""  # the last lines of the gate's output
    log_path: str | None = None  # the whole output
    # What the gate found, one line each: new failure lines (baseline gates), offending paths or
    # secret locations (diff gates). Never a secret's value.
    findings: list[str] = Field(default_factory=list)
    # Baseline gates: failure lines also present on the target, which therefore do not fail the change.
    preexisting: list[str] = Field(default_factory=list)
    tests: TestCounts | None = None  # for test runs whose output (or JUnit XML) gives the counts

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "skipped")


DIFF_GROUP = "diff"
_SEVERITY = {"skipped": 0, "pass": 1, "error": 2, "fail": 3}


def _worst(a: str, b: str) -> str:
    return a if _SEVERITY[a] >= _SEVERITY[b] else b


_MARK = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skipped": "SKIP"}


class SuiteReport(BaseModel):
    reports: list[GateReport] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.reports)

    @property
    def failures(self) -> list[GateReport]:
        return [r for r in self.reports if not r.ok]

    def trailer(self) -> str:
        """`diff=pass tests=pass lint=fail` for the `Gates:` commit trailer; `none` when no gate ran.

        The diff gates (`diff.nonempty`, `diff.paths`, …) are folded into one `diff=` entry, the
        worst of their statuses; the report itself keeps each of them."""
        entries: dict[str, str] = {}
        for r in self.reports:
            key = DIFF_GROUP if r.name.startswith(DIFF_GROUP + ".") else r.name
            entries[key] = _worst(entries[key], r.status) if key in entries else r.status
        return " ".join(f"{k}={v}" for k, v in entries.items()) or "none"

    def tests_trailer(self) -> str:
        """`tests collected=12 passed=11 failed=0 skipped=1 duration=0.8s` per test gate, `; `-joined;
        "" when no gate gave test counts (the `Tests:` commit trailer)."""
        return "; ".join(f"{r.name} {r.tests.line()}" for r in self.reports if r.tests is not None)

    def summary(self) -> str:
        """One line for logs and close reasons."""
        if not self.reports:
            return "no gates configured"
        if self.passed:
            return f"all {len(self.reports)} gate(s) passed"
        return "; ".join(f"{r.name}: {r.reason or r.status}" for r in self.failures)

    def render_text(self, tail_lines: int = 30, list_limit: int = 20) -> str:
        """A human report: one line per gate, what it found, the output tail of every gate that did not pass."""
        lines: list[str] = []
        for r in self.reports:
            extra = f" (exit {r.exit_code})" if r.exit_code not in (None, 0) else ""
            reason = f": {r.reason}" if r.reason else ""
            lines.append(f"[{_MARK[r.status]}] {r.name} {r.duration_s:.1f}s{extra}{reason}")
            if r.tests is not None:
                lines.append(f"    tests: {r.tests.line()}")
            found = "new" if r.preexisting else "found"
            for title, items in ((found, r.findings), ("pre-existing (also on the target)", r.preexisting)):
                if items:
                    lines.append(f"    {title}:")
                    lines.extend("      " + item for item in items[:list_limit])
                    if len(items) > list_limit:
                        lines.append(f"      … and {len(items) - list_limit} more")
            if not r.ok and r.output_tail and not r.findings:
                tail = r.output_tail.splitlines()[-tail_lines:]
                lines.extend("    " + t for t in tail)
        return "\n".join(lines) if lines else "no gates configured"

    def render_json(self) -> str:
        """`{"passed": bool, "summary": str, "trailer": str, "reports": [GateReport, …]}`."""
        data = {"passed": self.passed, "summary": self.summary(), "trailer": self.trailer(), **self.model_dump()}
        return json.dumps(data, indent=2)
