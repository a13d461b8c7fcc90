"""The tracker contract suite runs every test twice: against the real bd and against the stand-in.

A test gets `bd` (the backend: raw CLI, workspace making, the runner's tracker over it) and `repo`
(a fresh workspace of that backend, prefix `tt`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bd_backends import BdBackend, real_backend, standin_backend
from tests.realtools import require_real_bd


@pytest.fixture(scope="session")
def _real_bd(tmp_path_factory: pytest.TempPathFactory) -> BdBackend:
    executable = require_real_bd()
    return real_backend(executable, tmp_path_factory.mktemp("bd-home"))


@pytest.fixture(scope="session")
def _standin_bd() -> BdBackend:
    return standin_backend()


@pytest.fixture(scope="session")
def _templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bd-templates")


@pytest.fixture(params=["real", "standin"])
def bd(request: pytest.FixtureRequest) -> BdBackend:
    return request.getfixturevalue(f"_{request.param}_bd")


@pytest.fixture
def repo(bd: BdBackend, tmp_path: Path, _templates: Path) -> Path:
    return bd.workspace(tmp_path / "repo", _templates)
