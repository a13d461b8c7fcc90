"""Git: worktrees per issue, one commit with trailers, landing fast-forward only, never on a dirty checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import git, new_repo
from beads_runner.errors import UnsafeIdError
from beads_runner.workspace import LandingRefused, Workspace, trailer_message



@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "repo"
    new_repo(path)
    (path / "a.txt").write_text("a\n")
    (path / ".gitignore").write_text(".beads-runner/\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "init")
    return path


def msg(issue_id: str, title: str = "Do it") -> str:
    return trailer_message(title, issue_id, "Body.", {"Beads-Issue": issue_id, "Beads-Run": "run-1", "Gates": "none"})


def test_trailer_message_shape_and_flattened_values():
    text = trailer_message("Fix\nthe thing", "bd-1", "Did it.", {"Beads-Issue": "bd-1", "Gates": "a=pass\nb=pass"})
    assert text == "Fix the thing (bd-1)\n\nDid it.\n\nBeads-Issue: bd-1\nGates: a=pass b=pass\n"


def test_worktree_is_reused_with_its_edits(repo):
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-1")
    (path / "new.txt").write_text("work in progress\n")
    assert ws.ensure_worktree("bd-1") == path
    assert (path / "new.txt").read_text() == "work in progress\n"
    assert ws.changed_files("bd-1") == ["new.txt"]
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_unsafe_ids_never_name_a_branch_or_path(repo):
    ws = Workspace(repo)
    for bad in ("../x", "a b", "x;rm -rf", "$(id)", "a\nb", "", "é", ".hidden", "x.lock"):
        with pytest.raises(UnsafeIdError):
            ws.ensure_worktree(bad)


def test_commit_folds_agent_commits_into_one_and_is_idempotent(repo):
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-2")
    (path / "one.txt").write_text("1\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "agent commit")  # the agent committed on its own
    (path / "two.txt").write_text("2\n")
    (path / ".beads").mkdir()
    (path / ".beads" / "issues.jsonl").write_text("{}\n")  # never committed
    sha = ws.commit("bd-2", msg("bd-2"))
    assert git(path, "rev-list", "--count", "main..HEAD") == "1"
    assert sorted(git(path, "show", "--name-only", "--format=", sha).split()) == ["one.txt", "two.txt"]
    assert ws.commit("bd-2", msg("bd-2")) == sha  # re-run after a crash: same commit


def test_land_fast_forwards_the_target_and_is_idempotent(repo):
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-3")
    (path / "b.txt").write_text("b\n")
    sha = ws.commit("bd-3", msg("bd-3"))
    landed = ws.land("bd-3")
    assert (landed.sha, landed.already, landed.rebased) == (sha, False, False)
    assert git(repo, "rev-parse", "main") == sha
    assert (repo / "b.txt").exists()  # the checkout of main was fast-forwarded
    again = ws.land("bd-3")
    assert again.already and again.sha == sha


def test_land_rebases_when_the_target_moved_and_re_runs_the_gates(repo):
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-4")
    (path / "c.txt").write_text("c\n")
    ws.commit("bd-4", msg("bd-4"))
    (repo / "other.txt").write_text("moved\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "someone else landed")
    regated = []
    landed = ws.land("bd-4", regate=lambda p: (regated.append(p) or True, "ok"))
    assert landed.rebased and regated == [path]
    assert git(repo, "rev-list", "--count", "HEAD") == "3"
    assert ws.find_commit("bd-4", "refs/heads/main") == landed.sha


def test_land_refuses_when_regate_fails_and_leaves_the_target(repo):
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-5")
    (path / "d.txt").write_text("d\n")
    ws.commit("bd-5", msg("bd-5"))
    (repo / "other.txt").write_text("moved\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "moved")
    before = git(repo, "rev-parse", "main")
    with pytest.raises(LandingRefused, match="gates fail"):
        ws.land("bd-5", regate=lambda p: (False, "tests: exited 1"))
    assert git(repo, "rev-parse", "main") == before


def test_land_never_touches_a_dirty_checkout_of_the_target(repo):
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-6")
    (path / "e.txt").write_text("e\n")
    ws.commit("bd-6", msg("bd-6"))
    (repo / "a.txt").write_text("a user's unsaved edit\n")
    before = git(repo, "rev-parse", "main")
    with pytest.raises(LandingRefused, match="uncommitted changes"):
        ws.land("bd-6")
    assert git(repo, "rev-parse", "main") == before
    assert (repo / "a.txt").read_text() == "a user's unsaved edit\n"
    assert git(repo, "rev-parse", "--verify", "beads-runner/bd-6")  # the branch is kept


def test_land_with_a_conflict_refuses_and_keeps_the_branch(repo):
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-7")
    (path / "a.txt").write_text("agent's a\n")
    ws.commit("bd-7", msg("bd-7"))
    (repo / "a.txt").write_text("someone else's a\n")
    git(repo, "commit", "-q", "-am", "conflicting")
    with pytest.raises(LandingRefused, match="does not rebase cleanly"):
        ws.land("bd-7")
    assert (path / "a.txt").read_text() == "agent's a\n"
    assert not (path / ".git").is_file() or "rebase" not in git(path, "status")


def test_land_when_target_is_not_checked_out_uses_compare_and_swap(repo):
    git(repo, "checkout", "-q", "-b", "elsewhere")
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-8")
    (path / "f.txt").write_text("f\n")
    sha = ws.commit("bd-8", msg("bd-8"))
    assert ws.land("bd-8").sha == sha
    assert git(repo, "rev-parse", "main") == sha


def test_remove_worktree_deletes_only_merged_branches(repo):
    ws = Workspace(repo)
    kept = ws.ensure_worktree("bd-9")
    (kept / "g.txt").write_text("g\n")
    unlanded = ws.commit("bd-9", msg("bd-9"))
    landed_wt = ws.ensure_worktree("bd-10")
    (landed_wt / "h.txt").write_text("h\n")
    ws.commit("bd-10", msg("bd-10"))
    ws.land("bd-10")

    ws.remove_worktree("bd-9")  # not landed: the worktree goes, the branch and its commit stay
    ws.remove_worktree("bd-10")  # landed: both go
    assert not kept.exists() and not landed_wt.exists()
    listed = git(repo, "worktree", "list", "--porcelain")
    assert str(kept) not in listed and str(landed_wt) not in listed  # git forgot them too
    assert git(repo, "rev-parse", "--verify", "beads-runner/bd-9") == unlanded
    assert git(repo, "branch", "--list", "beads-runner/bd-10") == ""
    assert (repo / "h.txt").exists() and not (repo / "g.txt").exists()  # main has only the landed work


# --- land.push: many machines, one remote --------------------------------------------------------

@pytest.fixture
def remote_and_clones(tmp_path):
    """A bare remote with one commit on main, and two clones of it (two machines)."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(remote), str(seed))
    for r in (seed,):
        git(r, "config", "user.name", "T")
        git(r, "config", "user.email", "t@example.com")
    (seed / "a.txt").write_text("a\n")
    (seed / ".gitignore").write_text(".beads-runner/\n")
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "init")
    git(seed, "push", "-q", "origin", "main")
    clones = []
    for name in ("machine-a", "machine-b"):
        path = tmp_path / name
        git(tmp_path, "clone", "-q", str(remote), str(path))
        git(path, "config", "user.name", name)
        git(path, "config", "user.email", f"{name}@example.com")
        clones.append(path)
    return remote, seed, clones


def test_push_lands_on_the_remote_and_a_stale_clone_builds_on_it(remote_and_clones):
    remote, _, (a, b) = remote_and_clones
    ws_a, ws_b = Workspace(a, push=True), Workspace(b, push=True)
    wt = ws_a.ensure_worktree("bd-p1")
    (wt / "p1.txt").write_text("1\n")
    sha1 = ws_a.commit("bd-p1", msg("bd-p1"))
    assert ws_a.land("bd-p1").sha == sha1
    assert git(remote, "rev-parse", "main") == sha1
    assert git(a, "rev-parse", "main") == sha1  # the local target follows when it can
    # machine b never pulled: its work still starts from the remote's main, so no rebase is needed
    wt_b = ws_b.ensure_worktree("bd-p2")
    assert (wt_b / "p1.txt").exists()
    (wt_b / "p2.txt").write_text("2\n")
    ws_b.commit("bd-p2", msg("bd-p2"))
    landed = ws_b.land("bd-p2")
    assert not landed.rebased
    assert git(remote, "rev-list", "--count", "main") == "3"
    assert ws_a.landed_commit("bd-p2") == landed.sha  # seen from the other machine, after a fetch


def test_a_rejected_push_is_fetched_rebased_re_gated_and_pushed_again(remote_and_clones):
    remote, seed, (a, _) = remote_and_clones
    ws = Workspace(a, push=True)
    wt = ws.ensure_worktree("bd-p3")
    (wt / "p3.txt").write_text("3\n")
    ws.commit("bd-p3", msg("bd-p3"))
    # another machine lands first, before this one starts landing
    (seed / "other.txt").write_text("x\n")
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "other")
    git(seed, "push", "-q", "origin", "main")
    regates = []

    def regate(path):
        regates.append(path)
        if len(regates) == 1:  # ... and once more while this one re-gates: its push will be rejected
            (seed / "again.txt").write_text("y\n")
            git(seed, "add", "-A")
            git(seed, "commit", "-q", "-m", "again")
            git(seed, "push", "-q", "origin", "main")
        return True, "ok"

    landed = ws.land("bd-p3", regate=regate)
    assert landed.rebased and len(regates) == 2  # rebased and re-gated twice
    assert git(remote, "rev-parse", "main") == landed.sha
    assert git(remote, "log", "--format=%s", "-3", "main").splitlines() == [
        "Do it (bd-p3)", "again", "other"]
    assert ws.land("bd-p3").already  # landing again finds it on the remote


def test_push_never_forces_over_someone_elses_history(remote_and_clones):
    remote, seed, (a, _) = remote_and_clones
    ws = Workspace(a, push=True)
    wt = ws.ensure_worktree("bd-p4")
    (wt / "a.txt").write_text("mine\n")
    ws.commit("bd-p4", msg("bd-p4"))
    (seed / "a.txt").write_text("theirs\n")
    git(seed, "commit", "-qam", "conflicting")
    git(seed, "push", "-q", "origin", "main")
    before = git(remote, "rev-parse", "main")
    with pytest.raises(LandingRefused, match="does not rebase cleanly"):
        ws.land("bd-p4")
    assert git(remote, "rev-parse", "main") == before


def test_landing_never_overwrites_an_ignored_or_untracked_file_of_the_checkout(repo):
    """Issue 17 item 6: the change un-ignores a path the owner keeps ignored in the main checkout, and
    adds that path; git's fast-forward would overwrite it silently."""
    (repo / ".gitignore").write_text(".beads-runner/\nlocal.env\n")
    git(repo, "commit", "-qam", "ignore local.env")
    (repo / "local.env").write_text("the owner's own settings\n")
    (repo / "notes.txt").write_text("untracked notes\n")
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-6")
    (path / ".gitignore").write_text(".beads-runner/\n")
    (path / "local.env").write_text("the agent's\n")
    (path / "notes.txt").write_text("the agent's\n")
    ws.commit("bd-6", msg("bd-6"))
    with pytest.raises(LandingRefused, match="overwrite 2 untracked or ignored file") as err:
        ws.land("bd-6")
    assert "local.env" in err.value.message and "notes.txt" in err.value.message
    assert (repo / "local.env").read_text() == "the owner's own settings\n"
    assert (repo / "notes.txt").read_text() == "untracked notes\n"
    assert ws.find_commit("bd-6", "main") is None
    (repo / "local.env").unlink()
    (repo / "notes.txt").unlink()
    assert ws.land("bd-6").sha == git(repo, "rev-parse", "main")  # moved away: it lands


def test_a_git_call_blocked_in_a_step_ends_when_the_step_is_cancelled(repo):
    """Issue 17 item 7: git blocking (here a clean filter that never returns; a hook can no longer
    run) hung the commit step for ever: its timeout was logged and had no effect."""
    import threading

    from beads_runner.errors import GitError
    from beads_runner.workspace import cancel_with

    git(repo, "config", "filter.stuck.clean", "sleep 463.5")
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-7")
    (path / ".gitattributes").write_text("*.txt filter=stuck\n")
    (path / "b.txt").write_text("b\n")
    cancel = threading.Event()
    outcome: dict = {}

    def commit() -> None:
        with cancel_with(cancel):
            try:
                ws.commit("bd-7", msg("bd-7"))
            except GitError as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=commit, daemon=True)
    thread.start()
    assert _wait_for_process("463.5"), "git never reached the filter"
    cancel.set()  # what the engine does when the step outlives its timeout
    thread.join(60)
    assert not thread.is_alive()
    assert "was stopped: the step was cancelled or timed out" in outcome["error"].message
    assert not _wait_for_process("463.5", present=False)


def _wait_for_process(marker: str, present: bool = True) -> bool:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = any(marker in (p / "cmdline").read_bytes().decode(errors="replace")
                    for p in Path("/proc").iterdir() if p.name.isdigit() and _readable(p / "cmdline"))
        if found == present:
            return found
        time.sleep(0.05)
    return not present


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
        return True
    except OSError:
        return False


def test_a_rewritten_worktree_git_file_is_repaired_not_reported_as_not_a_repository(repo):
    """Issue 17 item 18: an (unconfined) agent rewrote its worktree's `.git` file; every later git
    call said "not a git repository". The worktree is found again with its work."""
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-18")
    (path / "work.txt").write_text("kept\n")
    (path / ".git").write_text("gitdir: /nowhere/at/all\n")
    assert ws.ensure_worktree("bd-18") == path
    assert ws.changed_files("bd-18") == ["work.txt"]


def test_what_the_agent_committed_under_beads_itself_is_never_committed(repo):
    """Issue 17 item 18: with the diff checks off, a `.beads/` file the agent force-added and committed
    stayed in the index after the runner folded its commits, and was committed."""
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-19")
    (path / ".beads").mkdir()
    (path / ".beads" / "issues.jsonl").write_text("{}\n")
    (path / "work.txt").write_text("w\n")
    git(path, "add", "-f", ".beads/issues.jsonl", "work.txt")
    git(path, "commit", "-qm", "agent's own commit")
    sha = ws.commit("bd-19", msg("bd-19"), paths=["work.txt"])
    assert git(repo, "show", "--name-only", "--format=", sha).split() == ["work.txt"]


def test_changes_to_tracked_files_under_an_ignored_directory_commit_without_gits_ignored_hint(repo):
    """Issue 17 item 18: a tracked file under an ignored directory, changed or deleted by the agent,
    made the commit fail with git's "paths are ignored by one of your .gitignore files" hint; a file
    the agent created and then ignored itself is left out, as `git add -A .` leaves it."""
    (repo / ".gitignore").write_text("vendor/\n")
    (repo / "vendor").mkdir()
    (repo / "vendor" / "kept.txt").write_text("v1\n")
    (repo / "vendor" / "gone.txt").write_text("bye\n")
    git(repo, "add", "-f", ".gitignore", "vendor/kept.txt", "vendor/gone.txt")
    git(repo, "commit", "-qm", "vendored files, tracked under an ignored directory")
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-1i")
    (path / "vendor" / "kept.txt").write_text("v2\n")
    (path / "vendor" / "gone.txt").unlink()
    (path / "scratch.log").write_text("noise\n")
    (path / "work.txt").write_text("w\n")
    changed = ws.changed_files("bd-1i")
    assert {"vendor/kept.txt", "vendor/gone.txt", "scratch.log", "work.txt"} <= set(changed)
    with (path / ".gitignore").open("a") as fh:  # the agent ignores its scratch file after the snapshot
        fh.write("*.log\n")
    sha = ws.commit("bd-1i", msg("bd-1i"), paths=[*changed, ".gitignore"])
    shown = git(repo, "show", "--name-status", "--format=", sha).split("\n")
    assert sorted(shown) == sorted(["M\t.gitignore", "D\tvendor/gone.txt", "M\tvendor/kept.txt", "A\twork.txt"])


def test_a_rebase_whose_regate_was_interrupted_is_gated_before_it_lands(repo):
    """Issue 17 item 1: stopped during the re-gate after a rebase, the restarted commit step found the
    branch already on the target, skipped the gates and landed a tree no gate had seen."""
    ws = Workspace(repo)
    path = ws.ensure_worktree("bd-1r")
    (path / "d.txt").write_text("d\n")
    ws.commit("bd-1r", msg("bd-1r"))
    (repo / "other.txt").write_text("moved\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the target moved")
    before = git(repo, "rev-parse", "main")

    class Stopped(Exception):
        pass

    def stopped(_path):
        raise Stopped  # SIGTERM past the grace period, or kill -9: the re-gate never finishes

    with pytest.raises(Stopped):
        ws.land("bd-1r", regate=stopped)
    assert git(repo, "rev-parse", "main") == before
    gated_trees = []

    def regate(p):
        gated_trees.append(git(p, "rev-parse", "HEAD^{tree}"))
        return True, "tests=pass"

    landed = ws.land("bd-1r", regate=regate)  # the restart
    assert gated_trees == [git(repo, "rev-parse", f"{landed.sha}^{{tree}}")]  # exactly the landed tree
    assert git(repo, "rev-parse", "main") == landed.sha


def test_one_worktree_one_agent_while_its_runner_lives_even_stopped(repo):
    """Issue 17 item 11: a runner stopped (SIGSTOP) past its lease still holds the worktree's lock,
    so a second runner resuming its step cannot start a second agent there."""
    from beads_runner.workspace import WorktreeBusy

    first, second = Workspace(repo), Workspace(repo)  # two runners on one repository
    with first.worktree_lock("bd-11"):
        with pytest.raises(WorktreeBusy, match="one worktree, one agent"):
            with second.worktree_lock("bd-11"):
                pass
    with second.worktree_lock("bd-11"):  # released when its holder is done (or dead)
        pass
