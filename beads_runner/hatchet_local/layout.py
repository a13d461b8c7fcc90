"""Where a local Hatchet engine's files live, its client settings (client.env), and finding its
binaries, PostgreSQL's and free ports."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import structlog

from beads_runner import executables
from beads_runner.errors import RunnerError
from beads_runner.versions import version_in

log = structlog.get_logger("beads_runner.hatchet_local")

# Hatchet seeds this tenant on a fresh database (quickstart), as its docker images do.
DEFAULT_TENANT = "707d0855-80ab-4e1f-a156-f1c4546cbf52"
BINARIES = ("hatchet-lite", "hatchet-migrate", "hatchet-admin")
BIN_ENV = "BEADS_RUNNER_HATCHET_BIN"
CHECKOUT_TOOLS = Path(__file__).resolve().parents[2] / ".tools" / "bin"
PG_BIN_DIRS = ("/usr/lib/postgresql/{v}/bin",)
PG_USER_CANDIDATES = ("postgres", "nobody")
MAKE_TOOLS = "run `make tools` in the beads-runner checkout (needs Go ≥ 1.26), or set " + BIN_ENV


@dataclass
class LocalEngineLayout:
    """Where `up` keeps what it owns, all under `.beads-runner/hatchet/`."""

    root: Path

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def pg_password(self) -> Path:
        return self.root / "postgres.password"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def static(self) -> Path:
        return self.root / "static"

    @property
    def client_env(self) -> Path:
        return self.root / "client.env"

    @property
    def state(self) -> Path:
        return self.root / "engine.json"

    @property
    def ports(self) -> Path:
        return self.root / "ports.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def layout_for(state_dir: Path) -> LocalEngineLayout:
    return LocalEngineLayout(state_dir / "hatchet")


# --- the client side: client.env ----------------------------------------------------------------
def read_client_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def load_client_env(state_dir: Path) -> bool:
    """Put the local engine's client settings into os.environ unless HATCHET_CLIENT_TOKEN is set.

    Only keys not already set are filled in, so a user's own HATCHET_CLIENT_* always win."""
    if os.environ.get("HATCHET_CLIENT_TOKEN"):
        return False
    values = read_client_env(layout_for(state_dir).client_env)
    if not values.get("HATCHET_CLIENT_TOKEN"):
        return False
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return True


def write_client_env(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# Written by `beads-runner hatchet up`: the local engine's client settings.\n")
        for key, value in values.items():
            f.write(f"{key}={value}\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# --- finding things ---------------------------------------------------------------------------------
def find_engine_binaries(configured: str | None = None) -> dict[str, Path]:
    """hatchet-lite, hatchet-migrate and hatchet-admin from (in order) `engine.hatchet.bin_dir`,
    $BEADS_RUNNER_HATCHET_BIN, this checkout's .tools/bin, then PATH."""
    candidates: list[tuple[str, Path]] = []
    if configured:
        candidates.append(("engine.hatchet.bin_dir", Path(configured).expanduser()))
    if os.environ.get(BIN_ENV):
        candidates.append((BIN_ENV, Path(os.environ[BIN_ENV]).expanduser()))
    candidates.append(("make tools", CHECKOUT_TOOLS))
    for source, directory in candidates:
        found = {name: directory / name for name in BINARIES}
        if all(p.is_file() and os.access(p, os.X_OK) for p in found.values()):
            return found
        if source != "make tools":
            missing = [n for n, p in found.items() if not p.is_file()]
            raise RunnerError(f"{source} = {directory} lacks {', '.join(missing)}",
                              fix="point it at the directory `make tools` fills (.tools/bin), or unset it")
    on_path = {name: executables.on_path(name) for name in BINARIES}
    if all(on_path.values()):
        return {name: Path(p) for name, p in on_path.items() if p}
    raise RunnerError("no Hatchet engine binaries (hatchet-lite, hatchet-migrate, hatchet-admin) found",
                      fix=MAKE_TOOLS)


def find_pg_bin() -> Path:
    """The machine's PostgreSQL server binaries (Debian's `postgresql` package)."""
    roots = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: version_in(p.parent.name),
                   reverse=True)
    for d in roots:
        if (d / "initdb").exists() and (d / "postgres").exists():
            return d
    initdb = executables.on_path("initdb")
    if initdb and executables.on_path("postgres"):
        return Path(initdb).resolve().parent
    raise RunnerError("PostgreSQL's server binaries (initdb, postgres) are not installed",
                      fix="apt-get install postgresql (`make tools` does it as root), or set "
                          "engine.hatchet.database_url to a PostgreSQL ≥ 15 you run yourself")


def free_port(preferred: int | None = None) -> int:
    if preferred:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is still ours
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when `up` dies, even by kill -9."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
