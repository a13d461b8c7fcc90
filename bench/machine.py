"""The machine a benchmark ran on (for the report), and the memory and CPU its processes use."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.rig import OPENCODE, PY, ROOT


def _cmd(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                              cwd=ROOT).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"


def machine_facts() -> dict[str, Any]:
    cpu, mem = "unknown", "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    head = _cmd("git", "rev-parse", "--short", "HEAD")
    dirty = bool(_cmd("git", "status", "--porcelain", "--untracked-files=no"))
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(), "cpu": cpu, "mem_total": mem, "kernel": platform.release(),
        "python": platform.python_version(), "opencode": _cmd(str(OPENCODE), "--version") if OPENCODE.exists()
        else "not installed", "git": _cmd("git", "--version"),
        "loadavg_start": loadavg(), "commit": head + (" (uncommitted changes)" if dirty else ""),
        "command": " ".join([Path(PY).name, "-m", "bench.run", *sys.argv[1:]]),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


# --- memory ----------------------------------------------------------------------------------
def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished, waited-for descendants."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], list(children.get(pid, []))
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


class RssSampler(threading.Thread):
    """Samples VmRSS of a process and (separately) of all its descendants."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[dict[str, Any]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            own = rss_kb(self.pid)
            if own is None:
                break
            kids = [(p, rss_kb(p)) for p in descendants(self.pid)]
            kids = [(p, r) for p, r in kids if r]
            self.samples.append({"t": time.time(), "self_kb": own, "children_kb": sum(r for _, r in kids),
                                 "children": len(kids), "child_kb": [r for _, r in kids]})
            self._halt.wait(self.interval)

    def stop(self) -> list[dict[str, Any]]:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)
        return self.samples
