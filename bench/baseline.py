"""The sequential loop peers use, as the baseline: `bd ready` → agent → `git commit` → `bd close`,
one issue at a time, in the repository's own checkout (no worktree, no gates, no engine).

It uses the very tracker and agent objects beads-runner builds from the repository's
`.beads-runner.toml` (so both sides share tracker, agent, prompt and limits), and plain git.

    python -m bench.baseline REPO [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from beads_runner.agent.base import SessionRequest
from beads_runner.config import load_config
from beads_runner.prompt import load_template, render_prompt
from beads_runner.services import Services
from bench.rig import git


def sequential_loop(repo: Path) -> dict:
    """Work the backlog one issue at a time; returns per-issue timings (time.time())."""
    repo = Path(repo).resolve()
    svc = Services(repo, load_config(repo))
    tracker, agent = svc.tracker, svc.agent
    template = load_template(svc.state_dir)
    started = time.time()
    issues = []
    while True:
        ready = tracker.ready()  # `bd ready`
        if not ready:
            break
        issue = ready[0]
        t0 = time.time()
        issue = tracker.claim(issue.id)
        prompt = render_prompt(issue, template, "main")
        t_agent = time.time()
        result = agent.run(SessionRequest(issue_id=issue.id, prompt=prompt, workdir=repo,
                                          title=f"{issue.id}: {issue.title}"[:120]))
        t_agent_end = time.time()
        if not result.ok:
            raise SystemExit(f"baseline: agent failed on {issue.id}: {result.reason}\n{result.output_tail}")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "--no-verify", "-m", f"{issue.title} ({issue.id})")
        tracker.close(issue.id, "Done")  # `bd close`
        issues.append({"id": issue.id, "start": t0, "agent_start": t_agent, "agent_end": t_agent_end,
                       "agent_duration": result.duration_s, "end": time.time()})
    return {"started": started, "finished": time.time(), "issues": issues}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    out = sequential_loop(args.repo)
    text = json.dumps(out)
    if args.json_out:
        args.json_out.write_text(text, encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
