"""The one supervisor of agent and gate processes (beads_runner/supervisor.py): input, output, limits,
and that a limit takes the whole process group with it."""

from __future__ import annotations

import os
import sys
import threading
import uuid

from beads_runner.supervisor import supervise
from tests.helpers import processes_with


def _collect():
    chunks: list[bytes] = []
    return chunks, lambda pipe: chunks.extend(iter(lambda: pipe.read(4096), b""))


def test_stdin_is_fed_and_stderr_merged_into_stdout_by_default(tmp_path):
    chunks, read = _collect()
    ended = supervise(["sh", "-c", "cat; echo oops >&2; exit 3"], what="gate", cwd=tmp_path, env=dict(os.environ),
                      timeout=60, stdout=read, stdin_text="the prompt\n")
    assert b"".join(chunks) == b"the prompt\noops\n"
    assert (ended.exit_code, ended.killed) == (3, False)


def test_separate_stderr_reader_and_closed_stdin(tmp_path):
    out, read_out = _collect()
    err, read_err = _collect()
    ended = supervise(["sh", "-c", "cat; echo out; echo err >&2"], what="agent", cwd=tmp_path,
                      env=dict(os.environ), timeout=60, stdout=read_out, stderr=read_err)
    assert (b"".join(out), b"".join(err), ended.exit_code) == (b"out\n", b"err\n", 0)


def test_the_timeout_kills_the_whole_group(tmp_path):
    marker = f"supervised-{uuid.uuid4().hex}"
    chunks, read = _collect()
    # A grandchild whose own command line carries the marker (so the check cannot see the parent instead).
    grandchild = f"{sys.executable} -c 'import time; time.sleep(300)' {marker}"
    ended = supervise(["sh", "-c", f"{grandchild} & wait"], what="gate", cwd=tmp_path,
                      env=dict(os.environ), timeout=0.5, stdout=read)
    assert ended.timed_out and not ended.stalled and ended.exit_code is not None and ended.exit_code < 0
    assert processes_with(marker, wait=10) == []


def test_a_stall_is_what_the_caller_says_is_idle(tmp_path):
    ended = supervise(["sleep", "300"], what="agent", cwd=tmp_path, env=dict(os.environ), timeout=300,
                      stdout=_collect()[1], stderr=_collect()[1], idle_for=lambda: 99.0, stall_timeout=5,
                      kill_grace=0)
    assert ended.stalled and not ended.timed_out and ended.killed


def test_cancel_ends_it_and_says_so(tmp_path):
    cancel = threading.Event()
    cancel.set()
    ended = supervise(["sleep", "300"], what="gate", cwd=tmp_path, env=dict(os.environ), timeout=300,
                      stdout=_collect()[1], cancel=cancel)
    assert ended.cancelled and not ended.timed_out
