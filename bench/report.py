"""What every benchmark does with its figures: time each measure, keep the raw results, and put the
generated Markdown into its own section of bench/RESULTS.md (between its BEGIN and END markers),
leaving the other sections and the hand-written analysis as they are."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.machine import loadavg

ANALYSIS = "\n## Analysis"


def timed(results: dict[str, Any], name: str, fn: Callable[..., Any], *args: Any, shown: str = "",
          **kwargs: Any) -> None:
    """results[name] = fn(*args, **kwargs), saying on stderr (as `shown`, default the name) when it
    starts and how long it took."""
    shown = shown or name
    print(f"[bench] {shown} …", file=sys.stderr, flush=True)
    started = time.time()
    results[name] = fn(*args, **kwargs)
    print(f"[bench] {shown} done in {time.time() - started:.0f} s", file=sys.stderr, flush=True)


def save_raw(results: dict[str, Any], started: float, path: Path | None, keep_as: str) -> Path:
    """Close the results (the benchmark's elapsed time, the load average at its end) and write them
    as JSON to `path` (default: the temporary directory's `keep_as`, which outlives the benchmark's
    own workdir)."""
    results["elapsed_s"] = time.time() - started
    results["loadavg_end"] = loadavg()
    path = path or Path(tempfile.gettempdir()) / keep_as
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"[bench] raw results: {path}", file=sys.stderr)
    return path


def write_section(text: str, path: Path, begin: str, end: str) -> None:
    """Put `text` (which starts with `begin` and ends with `end`) into `path`: in place of the section
    there, else before the analysis, else at the end (a new file gets a title and an analysis stub)."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + text + rest.split(end, 1)[1]
    elif ANALYSIS in old:
        head, tail = old.split(ANALYSIS, 1)
        new = head.rstrip("\n") + "\n\n" + text + "\n" + ANALYSIS + tail
    elif old:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    else:
        new = "# Benchmark results\n\n" + text + "\n" + ANALYSIS + "\n\n(to be written)\n"
    path.write_text(new, encoding="utf-8")


def publish(text: str, *, write: bool, path: Path, begin: str, end: str,
            workdir: tempfile.TemporaryDirectory | None = None) -> int:
    """Print the Markdown; with `write`, also update its section of `path`. Then remove the
    benchmark's temporary `workdir`, if any. Returns the exit code of a benchmark that got here: 0."""
    print(text)
    if write:
        write_section(text, path, begin, end)
        print(f"[bench] updated {path}", file=sys.stderr)
    if workdir is not None:
        workdir.cleanup()
    return 0


def number(x: Any, digits: int = 2) -> str:
    """A figure for a table: floats to `digits` places, unknown (None, NaN) as a dash."""
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def verdict(value: float | None, target: float, higher_is_better: bool, *, by_how_much: bool = True) -> str:
    """"met", "MISSED" (by how much, and in %), or "not measured"."""
    if value is None or value != value:
        return "not measured"
    if value >= target if higher_is_better else value <= target:
        return "met"
    if not by_how_much:
        return "MISSED"
    gap = target - value if higher_is_better else value - target
    return f"MISSED by {gap:.2f} ({100 * gap / target:.0f} %)"
