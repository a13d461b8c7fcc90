"""The console in a real headless Chromium (Debian's `chromium`, driven by Playwright with its
executable path; no downloaded browser), served by `beads-runner start --ui` itself: a page watches
a scripted run advance live, then a person clicks Retry on a handed-over issue and sees it land.

The agent is the `command` kind running a script: for t-live it waits until the test lets it go
(so the page is seen showing the run in its process step), for t-bad it changes nothing (three
tries, then a person gets it) unless the prompt says it is a retry. Set CONSOLE_SCREENSHOTS=<dir>
to save the console-*.png screenshots of docs/ there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from beads_runner.tracker.jsonl import JsonlTracker
from tests.helpers import command_agent_repo
from tests.realtools import require_tool

CHROMIUM = Path("/usr/bin/chromium")
BEADS_RUNNER = Path(sys.executable).parent / "beads-runner"
WAIT_MS = 120_000

AGENT = textwrap.dedent("""\
    import os, sys, time
    prompt = sys.stdin.read()
    issue = os.environ["BEADS_ISSUE_ID"]
    if issue == "t-live":
        while not os.path.exists({release!r}):
            time.sleep(0.05)
    elif "This is a retry" not in prompt:
        print("nothing to do")
        sys.exit(0)
    with open(f"work-{{issue}}.txt", "w") as fh:
        fh.write("done")
    print(f"wrote work-{{issue}}.txt")
""")


def _repo(tmp: Path) -> tuple[Path, Path]:
    release = tmp / "release-t-live"
    (tmp / "agent.py").write_text(AGENT.format(release=str(release)))
    repo = command_agent_repo(tmp / "repo", tmp / "agent.py", top='sandbox = "off"\n', tracker='poll_interval = "1s"\n')
    return repo, release


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(proc: subprocess.Popen, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"start --ui exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                json.load(answer)
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def console(tmp_path):
    require_tool(CHROMIUM, "install Debian's chromium package (`make setup` does, as root)")
    repo, release = _repo(tmp_path)
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([str(BEADS_RUNNER), "--repo", str(repo), "start", "--ui", "--ui-port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(proc, f"{base}/api/runs")
        yield repo, release, base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _shot(page, name: str) -> None:
    where = os.environ.get("CONSOLE_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"console-{name}.png"), full_page=True)


def test_a_page_watches_a_run_land_live_and_a_retry_click_lands_a_handed_over_issue(console):
    from playwright.sync_api import expect, sync_playwright

    repo, release, base = console
    token = (repo / ".beads-runner" / "ui.token").read_text().strip()
    tracker = JsonlTracker(repo)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)
        page.goto(f"{base}/#token={token}")  # as `ui --open` opens it: the page keeps the token
        expect(page.locator("#token-state")).to_have_text("actions enabled")
        assert token not in page.url
        page.evaluate("window.notReloaded = true")

        # A run appears and advances on the open page, with no reload.
        tracker.create("Live work", id="t-live")
        row = page.locator('#running tr[data-issue="t-live"][data-phase="running"][data-step="process"]')
        expect(row).to_be_visible()
        assert page.evaluate("window.notReloaded === true")
        _shot(page, "now")
        page.goto(f"{base}/runs/{row.get_attribute('data-run')}")
        expect(page.locator('g[data-step="process"][data-status="running"]')).to_be_visible()
        page.evaluate("window.notReloaded = true")
        release.write_text("go")
        expect(page.locator("#run-phase")).to_have_attribute("data-phase", "landed")
        for step in ("check-deps", "process", "verify", "commit"):
            expect(page.locator(f'g[data-step="{step}"]')).to_have_attribute("data-status", "succeeded")
        expect(page.locator("text=close reason")).to_be_visible()
        assert page.evaluate("window.notReloaded === true")
        _shot(page, "run")

        # An issue the agent cannot do goes to a person; the Now page shows it without a reload.
        page.goto(f"{base}/")
        page.evaluate("window.notReloaded = true")
        tracker.create("Work that needs a second look", id="t-bad")
        expect(page.locator('#with-person tr[data-issue="t-bad"][data-phase="failed"]')).to_be_visible()
        assert page.evaluate("window.notReloaded === true")
        assert tracker.show("t-bad").status == "blocked"

        # A person clicks Retry on the issue's page: the CLI's retry; the page shows it land.
        page.goto(f"{base}/issues/t-bad")
        expect(page.locator("#explain")).to_have_attribute("data-code", "with_person")
        _shot(page, "issue")
        page.evaluate("window.notReloaded = true")
        page.locator('button[data-action="retry"]:not([data-fresh])').click()
        expect(page.locator("#explain")).to_have_attribute("data-code", "landed")
        assert page.evaluate("window.notReloaded === true")
        assert page.locator("tr[data-issue='t-bad']").count() == 2  # the handed-over run and the retry
        issue = tracker.show("t-bad")
        assert issue.status == "closed" and "needs-human" not in issue.labels
        assert any("asked beads-runner to retry" in c["text"] for c in tracker.comments("t-bad"))

        page.goto(f"{base}/charts")
        expect(page.locator("#success-rate")).to_have_text("67 %")  # t-live, t-bad's retry; t-bad's first run
        browser.close()
