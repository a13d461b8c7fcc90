"""docker-compose.yml: a valid compose file whose Hatchet engine other machines can reach, pinned to
the engine version the suite runs (`make tools` builds it from tools/hatchet/go.mod)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def engine_version_under_test() -> str:
    for line in (ROOT / "tools" / "hatchet" / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "github.com/hatchet-dev/hatchet":
            return parts[1]
    raise AssertionError("tools/hatchet/go.mod pins no github.com/hatchet-dev/hatchet")


def test_it_is_a_compose_file_with_the_two_services_and_their_volumes(compose):
    assert set(compose["services"]) == {"postgres", "hatchet-lite"}
    declared = set(compose["volumes"])
    for service in compose["services"].values():
        assert service["image"]
        for mount in service.get("volumes", []):
            assert mount.split(":")[0] in declared, mount
        # compose takes environment values as strings; a bare `t` or 7077 would be retyped by YAML
        assert all(isinstance(v, str) for v in service.get("environment", {}).values())
    lite = compose["services"]["hatchet-lite"]
    assert lite["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert urlparse(lite["environment"]["DATABASE_URL"]).hostname == "postgres"


def test_images_are_pinned_to_the_tested_engine_and_postgres_15(compose):
    services = compose["services"]
    version = engine_version_under_test()
    assert version == "v0.104.7"
    assert services["hatchet-lite"]["image"] == f"ghcr.io/hatchet-dev/hatchet/hatchet-lite:{version}"
    assert re.fullmatch(r"postgres:15\.\d+", services["postgres"]["image"])


def test_grpc_listens_beyond_the_container_and_its_internal_client_dials_it_inside(compose):
    lite = compose["services"]["hatchet-lite"]
    env = lite["environment"]
    grpc_port = env["SERVER_GRPC_PORT"]
    assert env["SERVER_GRPC_BIND_ADDRESS"] == "0.0.0.0"  # the engine's default, 127.0.0.1, is unreachable
    assert env["SERVER_INTERNAL_CLIENT_INTERNAL_GRPC_BROADCAST_ADDRESS"] == f"localhost:{grpc_port}"
    assert f"{grpc_port}:{grpc_port}" in [p.split("#")[0].strip() for p in lite["ports"]]
    assert env["SERVER_GRPC_INSECURE"] == "t"  # the client side: HATCHET_CLIENT_TLS_STRATEGY=none
