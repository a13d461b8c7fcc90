"""What a gate run found, in a shape people, commit trailers and scripts can all read."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, Field

GateStatus = Literal["pass", "fail", "error", "skipped"]


class GateReport(BaseModel):
    name: str
    status: GateStatus
    duration_s: float = 0.0
    exit_code: int | None = None
    reason: str = ""  # one line: why it did not pass ("" when it passed)
    output_tail: str = ""  # the last lines of the gate's output
    log_path: str | None = None  # the whole output

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "skipped")


class SuiteReport(BaseModel):
    reports: list[GateReport] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.reports)

    @property
    def failures(self) -> list[GateReport]:
        return [r for r in self.reports if not r.ok]

    def trailer(self) -> str:
        """`tests=pass lint=pass` for the `Gates:` commit trailer; `none` when no gate is configured."""
        return " ".join(f"{r.name}={r.status}" for r in self.reports) or "none"

    def summary(self) -> str:
        """One line for logs and close reasons."""
        if not self.reports:
            return "no gates configured"
        if self.passed:
            return f"all {len(self.reports)} gate(s) passed"
        return "; ".join(f"{r.name}: {r.reason or r.status}" for r in self.failures)

    def render_text(self, tail_lines: int = 30) -> str:
        """A human report, with the output tail of every gate that did not pass."""
        lines = []
        for r in self.reports:
            mark = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skipped": "SKIP"}[r.status]
            extra = f" (exit {r.exit_code})" if r.exit_code not in (None, 0) else ""
            lines.append(f"[{mark}] {r.name} {r.duration_s:.1f}s{extra}" + (f": {r.reason}" if r.reason else ""))
            if not r.ok and r.output_tail:
                tail = r.output_tail.splitlines()[-tail_lines:]
                lines.extend("    " + t for t in tail)
        return "\n".join(lines) if lines else "no gates configured"

    def render_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2)
