"""`beads-runner demo`: the whole flow on a sample repository, offline.

Builds a small Python library in a fresh git repository with five beads issues (in beads' JSONL
export format, so no `bd` is needed). Four land: one of them is blocked by another until that one
lands, and one is first done wrong, then fixed by the same session once it is shown the failing
gate. The fifth stays broken however often it is shown the report, so it goes to a person. The
agent is the real `opencode` binary; its model is the scripted model server shipped with
beads-runner, which answers with tool calls that really write the files.

`--engine hatchet` runs the same backlog on a local Hatchet engine instead of the embedded one:
`beads-runner hatchet up` for the demo repository, two `beads-runner worker` processes and
`beads-runner start --once`, each a subprocess of the demo, all stopped when it ends.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
from pathlib import Path

import click

from beads_runner import executables
from beads_runner.config import CONFIG_FILE, load_config
from beads_runner.environ import environment
from beads_runner.daemon import Runner
from beads_runner.errors import RunnerError
from beads_runner.gitcmd import run_git
from beads_runner.logs import configure_logging
from beads_runner.sandbox import SandboxUnavailable
from beads_runner.scripted_model import ScriptedModelServer
from beads_runner.services import Services, register_services
from beads_runner.tracker.jsonl import JsonlTracker

FILES = {
    "mathlib/__init__.py": '"""A tiny library the demo\'s agent extends."""\n',
    "tests/__init__.py": "",
    "tests/test_package.py": textwrap.dedent("""\
        import unittest

        import mathlib


        class PackageTest(unittest.TestCase):
            def test_imports(self):
                self.assertTrue(mathlib.__doc__)
        """),
    "README.md": "# mathlib\n\nA sample repository for the beads-runner demo.\n",
    ".gitignore": ".beads-runner/\n__pycache__/\n",
}

# (id, title, description, depends on, files the scripted agent writes)
# demo-mul's first attempt is wrong: the gate fails and the fix loop gives the session the report.
WRONG_FIRST = {"demo-mul": {"mathlib/multiply.py": "def multiply(a, b):\n    return a + b\n"}}
ISSUES = [
    ("demo-add", "Add add(a, b)", "mathlib needs an `add(a, b)` function returning the sum, with a test.", [], {
        "mathlib/add.py": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n    return a + b\n",
        "tests/test_add.py": "import unittest\n\nfrom mathlib.add import add\n\n\nclass AddTest(unittest.TestCase):\n"
                             "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n",
    }),
    ("demo-total", "Add total(numbers) built on add()",
     "A `total(numbers)` function that sums a list using `add`, with a test.", ["demo-add"], {
         "mathlib/total.py": "from functools import reduce\n\nfrom mathlib.add import add\n\n\n"
                             "def total(numbers):\n    \"\"\"Sum a list with add().\"\"\"\n"
                             "    return reduce(add, numbers, 0)\n",
         "tests/test_total.py": "import unittest\n\nfrom mathlib.total import total\n\n\n"
                                "class TotalTest(unittest.TestCase):\n    def test_total(self):\n"
                                "        self.assertEqual(total([1, 2, 3, 4]), 10)\n",
     }),
    ("demo-mul", "Add multiply(a, b)", "A `multiply(a, b)` function, with a test.", [], {
        "mathlib/multiply.py": "def multiply(a, b):\n    \"\"\"Return a * b.\"\"\"\n    return a * b\n",
        "tests/test_multiply.py": "import unittest\n\nfrom mathlib.multiply import multiply\n\n\n"
                                  "class MultiplyTest(unittest.TestCase):\n    def test_multiply(self):\n"
                                  "        self.assertEqual(multiply(6, 7), 42)\n",
    }),
    ("demo-docs", "Write USAGE.md", "Document how to use the library in USAGE.md.", [], {
        "USAGE.md": "# Using mathlib\n\n```python\nfrom mathlib.add import add\nadd(2, 3)  # 5\n```\n",
    }),
    ("demo-div", "Add divide(a, b)", "A `divide(a, b)` function, with a test.", [], {
        # The scripted agent gets this one wrong: the gate catches it and a person gets the issue.
        "mathlib/divide.py": "def divide(a, b):\n    return a // b\n",
        "tests/test_divide.py": "import unittest\n\nfrom mathlib.divide import divide\n\n\n"
                                "class DivideTest(unittest.TestCase):\n    def test_divide(self):\n"
                                "        self.assertEqual(divide(7, 2), 3.5)\n",
    }),
]


def demo_script(delay: float = 0.0) -> dict:
    """The scripted model's answers: for each issue, write its files, then summarise."""
    scenarios = []
    for issue_id, title, _desc, _deps, files in ISSUES:
        def writes(contents: dict) -> list:
            return [{"name": "write", "args": {"filePath": p, "content": c}} for p, c in contents.items()]

        rounds = [[
            {"text": f"Implementing {issue_id}: writing {', '.join(files)}.",
             "tools": writes({**files, **WRONG_FIRST.get(issue_id, {})})},
            {"text": f"{title}: added {', '.join(files)}."},
        ]]
        if issue_id in WRONG_FIRST:  # the second user message is the gate report: fix it
            rounds.append([
                {"text": "The test shows multiply adds; fixing it.", "tools": writes(files)},
                {"text": f"{title}: added {', '.join(files)}; fixed multiply after the failing test."},
            ])
        scenarios.append({"match": f"Issue {issue_id} ", "delay": delay, "rounds": rounds})
    return {"scenarios": scenarios, "fallback": {"text": "No scripted answer for this prompt; nothing done."}}


def _git(repo: Path, *args: str) -> str:
    result = run_git(args, cwd=repo)
    if not result.ok:
        raise RunnerError(f"git {' '.join(args[:2])} failed in {repo}: {result.message()}")
    return result.stdout.decode("utf-8", "replace")


def build_sample_repo(repo: Path, fresh: bool = True, engine: str = "local") -> JsonlTracker:
    if fresh and repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True, exist_ok=True)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "Demo User")
    _git(repo, "config", "user.email", "demo@example.com")
    for rel, text in FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text, encoding="utf-8")
    (repo / ".beads").mkdir(exist_ok=True)
    (repo / ".beads" / "issues.jsonl").write_text("", encoding="utf-8")
    tracker = JsonlTracker(repo, actor="beads-runner")
    for issue_id, title, desc, deps, _files in ISSUES:
        tracker.create(title, description=desc, deps=deps, priority=2, issue_type="task", id=issue_id)
    python = sys.executable
    (repo / CONFIG_FILE).write_text(textwrap.dedent(f"""\
        # The demo's configuration (see `beads-runner init --print` for every key).
        [tracker]
        kind = "jsonl"            # no bd here: beads' JSONL export format in .beads/issues.jsonl
        poll_interval = "2s"

        [agent]
        kind = "opencode"
        model = "scripted/scripted"   # the scripted model server the demo starts
        timeout = "5m"
        stall_timeout = "2m"

        [engine]
        kind = "{engine}"
        max_sessions = 3
        grace_period = "10s"

        [engine.retry]
        backoff = "1s"

        [land]
        target = "main"

        [[gates]]
        name = "tests"
        run = "{python} -m unittest discover -s tests -t . -q"
        timeout = "2m"
        """), encoding="utf-8")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "Sample library with a beads backlog")
    return tracker


ENGINES = ("local", "hatchet")


def run_demo(repo: Path, fresh: bool = True, delay: float = 0.0, engine: str = "local") -> int:
    echo = click.echo
    if engine not in ENGINES:
        raise RunnerError(f"unknown engine {engine!r}", fix=f"use one of: {', '.join(ENGINES)}")
    echo(f"Building the sample repository in {repo}")
    tracker = build_sample_repo(repo, fresh=fresh, engine=engine)
    for issue in tracker.ready():
        echo(f"  ready: {issue.id:<11} {issue.title}")
    echo("  (demo-total waits for demo-add; demo-mul is first done wrong and fixed after its failing gate;")
    echo("   demo-div stays wrong, so it goes to a person)")
    with ScriptedModelServer(demo_script(delay)) as server:
        echo(f"Scripted model server on {server.url}")
        env = server.opencode_env()
        # opencode keeps its sessions in the demo's own state dir; its package cache stays shared.
        env["XDG_DATA_HOME"] = str(repo / ".beads-runner" / "opencode-data")
        if engine == "hatchet":
            from beads_runner.demo_hatchet import run_on_local_hatchet

            code, elapsed = run_on_local_hatchet(repo, env)
        else:
            code, elapsed = _run_embedded(repo, env)
    return _report(repo, tracker, code, elapsed, engine)


def _run_embedded(repo: Path, env: dict[str, str]) -> tuple[int, float]:
    echo = click.echo
    with environment(env):
        svc = register_services(Services(repo, load_config(repo)))
        try:
            echo(f"Sandbox: {svc.enter_sandbox().describe()}")
        except SandboxUnavailable as exc:  # the demo still shows the flow, and says what is missing
            echo(f"Sandbox: none ({exc.message}); the demo runs unconfined. {exc.fix}")
        configure_logging(svc.state_dir / "logs")
        started = time.monotonic()
        code = Runner(svc).run(once=True)
        return code, time.monotonic() - started


def _report(repo: Path, tracker: JsonlTracker, code: int, elapsed: float, engine: str = "local") -> int:
    echo = click.echo
    echo(f"\nThe runner finished in {elapsed:.1f}s (exit {code}: 1 means a run failed, as demo-div should).\n")
    echo("git log main:")
    echo(_git(repo, "log", "main", "--format=  %h %s%n      %(trailers:key=Beads-Issue,key=Beads-Run,key=Agent,"
                          "key=Gates,separator=%x0a      )"))
    echo("Issues:")
    expected_closed = {i[0] for i in ISSUES} - {"demo-div"}
    ok = True
    for issue_id, *_ in ISSUES:
        issue = tracker.show(issue_id)
        extra = issue.close_reason if issue.status == "closed" else ", ".join(issue.labels)
        echo(f"  {issue_id:<11} {issue.status:<8} {extra}")
        want = "closed" if issue_id in expected_closed else "blocked"
        ok &= issue.status == want
    comments = tracker.comments("demo-div")
    if comments:
        echo("\nComment on demo-div:\n" + textwrap.indent(comments[-1]["text"], "  | ", lambda _line: True))
    branches = _git(repo, "branch", "--list", "--format=%(refname:short)", "beads-runner/*").split()
    echo(f"\nBranches kept for a person: {', '.join(branches) or 'none'}")
    exe = executables.on_path("beads-runner") or str(Path(sys.executable).parent / "beads-runner")
    if engine == "hatchet":
        echo(f"\nTry: cd {repo} && {exe} hatchet up   (the engine again, with its data)")
        echo(f"     then in another terminal there: {exe} status && {exe} review && {exe} logs demo-total")
    else:
        echo(f"\nTry: cd {repo} && {exe} status && {exe} review && {exe} logs demo-total")
    if not ok:
        echo("\nDEMO FAILED: the issues did not end as expected (see above and .beads-runner/logs/).", err=True)
        return 1
    echo("\nDemo OK: four issues landed in dependency order (demo-mul after one fix from its gate report);")
    echo("the broken one went to a person with its comment and its branch.")
    return 0
