"""Reading opencode's own log for what its event stream does not say: the provider's errors.

opencode 1.18.33 retries a provider's 429 and 5xx answers by itself, silently on `--format json`
stdout, for as long as the session lives. What the provider said is in opencode's log file
(`$XDG_DATA_HOME/opencode/log/opencode.log`, appended by every opencode process), in logfmt:

    timestamp=… level=INFO run=e10412c9 message="creating instance" directory=/path/to/worktree
    timestamp=… level=ERROR run=e10412c9 message="stream error" providerID=openai …
        error.error="AI_APICallError: You exceeded your current quota, …"   (one line)

`run=` tags every line of one opencode process, and its "creating instance" line names the
directory it works in, so a session's lines are told apart from its neighbours' by its worktree.
Only what was appended after the session started is read.
"""

from __future__ import annotations

import re
from pathlib import Path

from beads_runner.limits import ProviderLimit, classify

_FIELD = re.compile(r'([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|\S*)')
MAX_READ = 1 << 20  # per poll and file: a runaway log is read in slices


def logfmt(line: str) -> dict[str, str]:
    out = {}
    for key, value in _FIELD.findall(line):
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[key] = value
    return out


def log_dir(env: dict[str, str], home: Path) -> Path:
    data = env.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(data) / "opencode" / "log"


class OpencodeLogWatch:
    """Follows opencode's log files for the errors of the one opencode process working in `workdir`."""

    def __init__(self, directory: Path, workdir: Path):
        self.directory = Path(directory)
        self.workdir = {str(workdir), str(Path(workdir).resolve())}
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, str] = {}
        self.run_tag: str | None = None
        self.last_error: str | None = None
        for path in self._files():
            try:
                self.offsets[path] = path.stat().st_size  # only what this session appends
            except OSError:
                pass

    def _files(self) -> list[Path]:
        try:
            return sorted(self.directory.glob("*.log"))
        except OSError:
            return []

    def _lines(self) -> list[str]:
        lines: list[str] = []
        for path in self._files():
            start = self.offsets.get(path, 0)
            try:
                with path.open("rb") as fh:
                    fh.seek(start)
                    chunk = fh.read(MAX_READ)
            except OSError:
                continue
            self.offsets[path] = start + len(chunk)
            text = self.partial.pop(path, "") + chunk.decode("utf-8", errors="replace")
            *complete, rest = text.split("\n")
            if rest:
                self.partial[path] = rest
            lines += complete
        return lines

    def poll(self) -> ProviderLimit | None:
        """The first limit (quota or credentials) this session's opencode has logged since the last
        poll; transient errors are remembered in `last_error` only."""
        found: ProviderLimit | None = None
        for line in self._lines():
            if "run=" not in line:
                continue
            fields = logfmt(line)
            if self.run_tag is None:
                if fields.get("message") == "creating instance" and fields.get("directory") in self.workdir:
                    self.run_tag = fields.get("run")
                continue
            if fields.get("run") != self.run_tag or fields.get("level") != "ERROR":
                continue
            text = fields.get("error.error") or fields.get("error.message") or fields.get("error") or ""
            if not text:
                continue
            self.last_error = text
            limit = classify(text)
            if limit is not None and limit.parks and found is None:
                found = limit
        return found
