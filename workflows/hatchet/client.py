"""The Hatchet client: its settings (token, address, namespace), checked with their fixes."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from beads_runner.errors import RunnerError
from beads_runner.services import Services

log = structlog.get_logger("beads_runner.hatchet")


DOCKER_COMPOSE_ENV = (
    "create an API token in the Hatchet dashboard (http://localhost:8888 with docker-compose.yml: "
    "Settings → API Tokens) and export HATCHET_CLIENT_TOKEN=<token>; for the docker-compose engine also "
    "export HATCHET_CLIENT_HOST_PORT=localhost:7077 and HATCHET_CLIENT_TLS_STRATEGY=none "
    "(see docs/hatchet.md)"
)


def _is_run_id(text: str) -> bool:
    try:
        uuid.UUID(text)
        return True
    except (ValueError, TypeError, AttributeError):
        return False


# --- the client -------------------------------------------------------------------------------------
def repo_namespace(services: Services | None) -> str:
    """The prefix of this repository's workflow on the engine: `engine.hatchet.namespace`, else
    HATCHET_CLIENT_NAMESPACE, else `br_` and the repository's first commit, which every clone shares
    and no other repository has. Runs of two repositories on one engine never meet."""
    import os

    if services is None:
        return os.environ.get("HATCHET_CLIENT_NAMESPACE", "")
    configured = services.config.engine.hatchet.namespace or os.environ.get("HATCHET_CLIENT_NAMESPACE")
    if configured:
        return configured
    try:
        identity = services.workspace.root_commit()
    except Exception:  # noqa: BLE001 - not a git repository (yet): this path is all it has
        import hashlib

        identity = hashlib.sha1(str(services.repo).encode()).hexdigest()
    return f"br_{identity[:12]}"


def make_client(services: Services | None = None):
    """A Hatchet client from the HATCHET_CLIENT_* environment; opens no connection yet.

    Every setting is read now (not at import), so a token exported after start-up counts. With
    `services`, the settings `beads-runner hatchet up` wrote fill in what the environment lacks."""
    from hatchet_sdk import ClientConfig, Hatchet
    from hatchet_sdk.config import ClientTLSConfig, TenacityConfig

    if services is not None:
        from beads_runner.hatchet_local import load_client_env

        load_client_env(services.state_dir)  # unless the user set a token of their own

    namespace = repo_namespace(services)
    try:
        config = ClientConfig(tls_config=ClientTLSConfig(), tenacity=TenacityConfig(),
                              **({"namespace": namespace} if namespace else {}))
        return Hatchet(config=config)
    except Exception as exc:  # noqa: BLE001 - pydantic, base64 and JSON errors all mean a bad token
        text = str(exc)
        if "API token is required" in text:
            raise RunnerError("HATCHET_CLIENT_TOKEN is not set (engine.kind = \"hatchet\" needs an API token)",
                              fix=DOCKER_COMPOSE_ENV) from None
        problem = next((line.strip() for line in text.splitlines()
                        if line.strip() and not line.strip().startswith("For further")), type(exc).__name__)
        if "validation error" in problem:
            problem = next((line.strip() for line in text.splitlines()[1:] if line.strip().startswith("Value")),
                           problem)
        raise RunnerError(f"HATCHET_CLIENT_TOKEN is not a valid Hatchet API token ({problem[:200]})",
                          fix="copy the whole token again (a JWT starting with \"ey\"); "
                          + DOCKER_COMPOSE_ENV) from None


def check_hatchet_config(contact: bool = False) -> str:
    """For `doctor`: the token is there and parses, and says where the engine is; with `contact`,
    the engine answers with that token."""
    from hatchet_sdk.token import extract_claims_from_jwt

    hatchet = make_client()
    cfg = hatchet.config
    try:
        claims = extract_claims_from_jwt(cfg.token)
    except Exception as exc:  # noqa: BLE001
        raise RunnerError(f"HATCHET_CLIENT_TOKEN cannot be read: {exc}", fix=DOCKER_COMPOSE_ENV) from None
    host = cfg.host_port
    tls = cfg.tls_config.strategy
    if not host or ":" not in host:
        raise RunnerError(f"the Hatchet gRPC address {host!r} has no port",
                          fix="export HATCHET_CLIENT_HOST_PORT=<host>:<port> (localhost:7077 for docker-compose.yml)")
    if tls not in ("tls", "mtls", "none"):
        raise RunnerError(f"HATCHET_CLIENT_TLS_STRATEGY={tls!r} is not one of tls, mtls, none",
                          fix="export HATCHET_CLIENT_TLS_STRATEGY=none for docker-compose.yml, tls for Hatchet Cloud")
    if tls != "none" and host.split(":")[0] in ("localhost", "127.0.0.1", "0.0.0.0"):
        raise RunnerError(f"TLS strategy {tls!r} for the local engine at {host}; hatchet-lite speaks plain gRPC",
                          fix="export HATCHET_CLIENT_TLS_STRATEGY=none")
    where = (f"hatchet: tenant {claims.sub}, gRPC {host} (TLS {tls}), API {cfg.server_url}"
             f"{', namespace ' + cfg.namespace if cfg.namespace else ''}")
    if not contact:
        return where + " (token parsed; engine not contacted)"
    _wait_for_engine(hatchet, attempts=1)
    return where + " (engine answered)"


def _wait_for_engine(hatchet: Any, attempts: int = 10, delay: float = 1.0) -> None:
    """Block until Hatchet's API answers, with backoff; a clear error if it never does."""
    last = ""
    for n in range(attempts):
        try:
            hatchet.runs.list(limit=1, since=datetime.now(tz=UTC) - timedelta(minutes=1),
                              include_payloads=False)
            return
        except Exception as exc:  # noqa: BLE001
            last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "401" in last or "403" in last or "Unauthorized" in last:
                raise RunnerError(f"the Hatchet engine at {hatchet.config.server_url} refused the token ({last})",
                                  fix="create a new API token for this tenant; " + DOCKER_COMPOSE_ENV) from None
            if n + 1 < attempts:
                log.warning("waiting for the Hatchet engine", api=hatchet.config.server_url, error=last,
                            attempt=n + 1)
                time.sleep(min(10.0, delay * 2 ** n))
    raise RunnerError(
        f"cannot reach the Hatchet engine (API {hatchet.config.server_url}, gRPC {hatchet.config.host_port}): {last}",
        fix="start it (`beads-runner hatchet up` on this machine, or `docker compose up -d`; see docs/hatchet.md) "
            "and check HATCHET_CLIENT_HOST_PORT and HATCHET_CLIENT_TLS_STRATEGY")
