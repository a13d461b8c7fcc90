"""`beads-runner hatchet up`: a Hatchet engine on one machine, no Docker.

It runs the engine the way Hatchet's own `hatchet-lite` image does, from binaries built by
`make tools` (Hatchet's Go module, pinned in tools/hatchet/go.mod):
  1. PostgreSQL: `engine.hatchet.database_url` if set, else a cluster `up` creates and owns under
     `.beads-runner/hatchet/postgres`, run with the machine's PostgreSQL server binaries on a free
     loopback port (as an unprivileged user when we are root: PostgreSQL refuses to run as root);
  2. `hatchet-migrate` (the schema; it creates btree_gist itself);
  3. `hatchet-admin quickstart` once (keys, the default tenant) and `hatchet-admin token create`;
  4. `hatchet-lite`: engine (gRPC), REST API and a reverse proxy in one process, with Postgres as
     the message queue.
When the engine answers, the client settings go to `.beads-runner/hatchet/client.env` (0600), which
every command reads when HATCHET_CLIENT_TOKEN is not set. Ctrl-C or SIGTERM stops the engine, then
its Postgres; their data stays for the next `up`.
"""

from beads_runner.hatchet_local.engine import EnginePorts, LocalEngine, api_ready, engine_status, serve
from beads_runner.hatchet_local.layout import (
    BIN_ENV, BINARIES, DEFAULT_TENANT, MAKE_TOOLS, LocalEngineLayout, die_with_parent, find_engine_binaries,
    find_pg_bin, free_port, layout_for, load_client_env, port_open, read_client_env, write_client_env,
)
from beads_runner.hatchet_local.postgres import OwnedPostgres

__all__ = [
    "BINARIES", "BIN_ENV", "DEFAULT_TENANT", "MAKE_TOOLS", "EnginePorts", "LocalEngine", "LocalEngineLayout",
    "OwnedPostgres", "api_ready", "die_with_parent", "engine_status", "find_engine_binaries", "find_pg_bin",
    "free_port", "layout_for", "load_client_env", "port_open", "read_client_env", "serve", "write_client_env",
]
