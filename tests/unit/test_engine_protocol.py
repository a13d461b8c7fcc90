"""Both engines implement every member of `workflows.engine.Engine`, with signatures its callers can
use: a member missing, renamed or taking other parameters fails here, not in `status` on Hatchet."""

from __future__ import annotations

import inspect

import pytest

from workflows.engine import Engine
from workflows.hatchet import HatchetEngine
from workflows.local import LocalEngine


def protocol_members() -> dict[str, object]:
    return {name: value for name, value in vars(Engine).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))}


def _parameters(fn) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def problems(engine_class: type, name: str) -> list[str]:
    """What keeps `engine_class.name` from standing in for `Engine.name`."""
    wanted = protocol_members()[name]
    have = inspect.getattr_static(engine_class, name, None)
    if have is None:
        return [f"{engine_class.__name__} lacks {name}"]
    if isinstance(wanted, property):
        return [] if isinstance(have, property) else [f"{engine_class.__name__}.{name} is not a property"]
    if not callable(have):
        return [f"{engine_class.__name__}.{name} is not a method"]
    found = []
    theirs = {p.name: p for p in _parameters(have)}
    for p in _parameters(wanted):
        q = theirs.get(p.name)
        if q is None:
            found.append(f"{engine_class.__name__}.{name} lacks parameter {p.name}")
        elif q.kind != p.kind:
            found.append(f"{engine_class.__name__}.{name}({p.name}) is {q.kind}, not {p.kind}")
        elif p.default is not inspect.Parameter.empty and q.default != p.default:
            found.append(f"{engine_class.__name__}.{name}({p.name}) defaults to {q.default!r}, not {p.default!r}")
    names = {p.name for p in _parameters(wanted)}
    found += [f"{engine_class.__name__}.{name} requires {q.name}, which callers do not pass"
              for q in theirs.values() if q.name not in names and q.default is inspect.Parameter.empty
              and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)]
    return found


def test_the_protocol_names_what_its_callers_use():
    # The names the daemon, the commands and the console call (issue 15): adding is fine, renaming not.
    assert {"submit", "active_run", "runs", "get_run", "attempts", "events", "events_since", "last_event_id",
            "sessions_in_use", "request_cancel", "has_active_runs", "add_listener", "dashboard_url", "counts",
            "start", "stop", "cancel_running", "steps_run_here", "prepare", "housekeeping"} <= set(protocol_members())


@pytest.mark.parametrize("engine_class", [LocalEngine, HatchetEngine])
@pytest.mark.parametrize("name", sorted(protocol_members()))
def test_each_engine_implements_each_member_compatibly(engine_class, name):
    assert problems(engine_class, name) == []


def test_a_missing_member_or_a_changed_signature_is_caught():
    class Half:
        def submit(self, inp, extra):  # noqa: ANN001
            return "r", True

        def runs(self, statuses=None, limit=50, key=None, before=None):  # noqa: ANN001
            return []

    assert problems(Half, "get_run") == ["Half lacks get_run"]
    assert problems(Half, "submit") == ["Half.submit requires extra, which callers do not pass"]
    assert problems(Half, "runs") == ["Half.runs(limit) defaults to 50, not 100"]
    assert problems(Half, "steps_run_here") == ["Half lacks steps_run_here"]
