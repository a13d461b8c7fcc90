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

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from beads_runner.errors import RunnerError
from beads_runner.versions import version_in

log = structlog.get_logger("beads_runner.hatchet_local")

# Hatchet seeds this tenant on a fresh database (quickstart), as its docker images do.
DEFAULT_TENANT = "707d0855-80ab-4e1f-a156-f1c4546cbf52"
BINARIES = ("hatchet-lite", "hatchet-migrate", "hatchet-admin")
BIN_ENV = "BEADS_RUNNER_HATCHET_BIN"
CHECKOUT_TOOLS = Path(__file__).resolve().parents[1] / ".tools" / "bin"
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
    on_path = {name: shutil.which(name) for name in BINARIES}
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
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
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


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when `up` dies, even by kill -9."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# --- PostgreSQL -------------------------------------------------------------------------------------
@dataclass
class OwnedPostgres:
    """A PostgreSQL cluster in `layout.postgres`, run by `up` on a loopback port."""

    layout: LocalEngineLayout
    port: int
    bin_dir: Path = field(default_factory=find_pg_bin)
    process: subprocess.Popen | None = None

    def _user(self) -> tuple[int, int] | None:
        """Who runs postgres: ourselves, or (as root) an unprivileged system user."""
        if os.geteuid() != 0:
            return None
        for name in PG_USER_CANDIDATES:
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return entry.pw_uid, entry.pw_gid
        raise RunnerError("running as root, and there is no `postgres` user to run PostgreSQL as",
                          fix="apt-get install postgresql (it creates the user), or run beads-runner as another user")

    def _check_reachable(self, uid: int) -> None:
        """As root, postgres runs as another user: every directory above the data must let it through."""
        for parent in [self.layout.root, *self.layout.root.parents]:
            st = parent.stat()
            if st.st_uid != uid and not st.st_mode & 0o001:
                raise RunnerError(
                    f"PostgreSQL runs as uid {uid} (not root) and cannot enter {parent} "
                    f"(mode {oct(st.st_mode & 0o777)})",
                    fix=f"chmod o+x {parent}, or set engine.hatchet.database_url to a PostgreSQL you run")

    def password(self) -> str:
        path = self.layout.pg_password
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    @property
    def url(self) -> str:
        return f"postgresql://hatchet:{self.password()}@127.0.0.1:{self.port}/hatchet?sslmode=disable"

    def _run_as(self, user: tuple[int, int] | None) -> dict:
        if user is None:
            return {}
        return {"user": user[0], "group": user[1], "extra_groups": []}

    def init(self) -> None:
        data = self.layout.postgres
        if (data / "PG_VERSION").exists():
            return
        user = self._user()
        password = self.password()
        data.mkdir(parents=True, exist_ok=True)
        pwfile = self.layout.root / "postgres.pwfile"
        pwfile.write_text(password + "\n")
        if user is not None:
            self._check_reachable(user[0])
            os.chown(data, *user)
            os.chown(pwfile, *user)
        os.chmod(data, 0o700)
        try:
            result = subprocess.run(
                [str(self.bin_dir / "initdb"), "-D", str(data), "-U", "hatchet", f"--pwfile={pwfile}",
                 "-A", "scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"],
                capture_output=True, text=True, timeout=300, **self._run_as(user))
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise RunnerError(f"initdb failed: {(result.stderr or result.stdout).strip()[-500:]}",
                              fix="see the message above; `beads-runner hatchet up` creates the cluster again")
        log.info("created a PostgreSQL cluster for the local Hatchet engine", data=str(data))

    def start(self, log_file: Path) -> None:
        self.init()
        user = self._user()
        if user is not None:
            self._check_reachable(user[0])
        out = open(log_file, "ab")  # noqa: SIM115 - handed to the child, closed on stop
        self.process = subprocess.Popen(
            [str(self.bin_dir / "postgres"), "-D", str(self.layout.postgres), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=300",
             "-c", "timezone=UTC", "-c", "log_timezone=UTC", "-c", "shared_buffers=64MB"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            **self._run_as(user))
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RunnerError(f"PostgreSQL exited at start (status {self.process.returncode})",
                                  fix=f"see {log_file}")
            if self._sql("postgres", "select 1", check=False).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RunnerError("PostgreSQL did not accept connections within 60 s", fix=f"see {log_file}")
        if "1" not in self._sql("postgres", "select 1 from pg_database where datname = 'hatchet'").stdout:
            self._sql("postgres", "create database hatchet")

    def _sql(self, db: str, sql: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "PGPASSWORD": self.password(), "PGCONNECT_TIMEOUT": "5"}
        result = subprocess.run([str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "hatchet",
                                 "-d", db, "-tAc", sql], capture_output=True, text=True, env=env, timeout=60)
        if check and result.returncode != 0:
            raise RunnerError(f"PostgreSQL refused {sql!r}: {result.stderr.strip()[-300:]}",
                              fix="see .beads-runner/hatchet/logs/postgres.log")
        return result

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # fast shutdown: clean, and quick
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the engine -------------------------------------------------------------------------------------
@dataclass
class EnginePorts:
    grpc: int
    api: int
    proxy: int
    frontend: int
    health: int
    postgres: int

    @classmethod
    def choose(cls, previous: dict | None) -> EnginePorts:
        """The ports of the last `up` when they are free (workers keep their settings), else new ones."""
        previous = previous or {}
        taken: set[int] = set()

        def pick(name: str) -> int:
            port = free_port(previous.get(name))
            while port in taken:
                port = free_port()
            taken.add(port)
            return port

        return cls(**{name: pick(name) for name in ("grpc", "api", "proxy", "frontend", "health", "postgres")})


@dataclass
class LocalEngine:
    """One local Hatchet engine: its Postgres (unless given a URL) and hatchet-lite."""

    layout: LocalEngineLayout
    binaries: dict[str, Path]
    database_url: str | None = None
    processes: list[subprocess.Popen] = field(default_factory=list)
    postgres: OwnedPostgres | None = None
    ports: EnginePorts | None = None

    def _server_env(self, db_url: str) -> dict[str, str]:
        assert self.ports is not None
        p = self.ports
        cookie = self._secret("cookie.secret", lambda: f"{secrets.token_hex(16)} {secrets.token_hex(16)}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVER_", "DATABASE_", "HATCHET_"))}
        env.update({
            "DATABASE_URL": db_url,
            "DATABASE_MAX_CONNS": "50",
            "SERVER_PORT": str(p.api),
            "SERVER_URL": f"http://127.0.0.1:{p.proxy}",
            "SERVER_GRPC_PORT": str(p.grpc),
            "SERVER_GRPC_BIND_ADDRESS": "127.0.0.1",
            "SERVER_GRPC_BROADCAST_ADDRESS": f"127.0.0.1:{p.grpc}",
            "SERVER_INTERNAL_CLIENT_INTERNAL_GRPC_BROADCAST_ADDRESS": f"127.0.0.1:{p.grpc}",
            "SERVER_GRPC_INSECURE": "t",
            "SERVER_HEALTHCHECK_PORT": str(p.health),
            "SERVER_AUTH_COOKIE_SECRETS": cookie,
            "SERVER_AUTH_COOKIE_DOMAIN": "localhost",
            "SERVER_AUTH_COOKIE_INSECURE": "t",
            "SERVER_AUTH_SET_EMAIL_VERIFIED": "t",
            "SERVER_DEFAULT_ENGINE_VERSION": "V1",
            "SERVER_MSGQUEUE_KIND": "postgres",
            "SERVER_LOGGER_LEVEL": "warn",
            "SERVER_LOGGER_FORMAT": "console",
            "DATABASE_LOGGER_LEVEL": "error",
            "SERVER_ANALYTICS_POSTHOG_API_KEY": "",
            "LITE_STATIC_ASSET_DIR": str(self.layout.static),
            "LITE_FRONTEND_PORT": str(p.frontend),
            "LITE_RUNTIME_PORT": str(p.proxy),
        })
        return env

    def _secret(self, name: str, make) -> str:
        path = self.layout.root / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(make())
        return path.read_text().strip()

    def _tool(self, name: str, args: list[str], env: dict[str, str], timeout: float = 300) -> str:
        result = subprocess.run([str(self.binaries[name]), *args], capture_output=True, text=True, env=env,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            tail = (result.stderr.strip() or result.stdout.strip())[-800:]
            raise RunnerError(f"{name} {' '.join(args[:2])} failed (exit {result.returncode}): {tail}",
                              fix="see the message above; `beads-runner hatchet up` can be run again")
        return result.stdout

    def start(self, *, ready_timeout: float = 180.0) -> dict[str, str]:
        """Start everything and wait until the engine answers; return the client settings."""
        root = self.layout.root
        for d in (root, self.layout.logs, self.layout.static):
            d.mkdir(parents=True, exist_ok=True)
        index = self.layout.static / "index.html"
        if not index.exists():
            index.write_text("<!doctype html><title>Hatchet</title><p>This local engine has no dashboard bundled; "
                             "use <code>beads-runner status</code>.</p>\n")
        previous = None
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads(self.layout.ports.read_text())
        self.ports = EnginePorts.choose(previous)
        self.layout.ports.write_text(json.dumps(self.ports.__dict__))
        db_url = self.database_url
        if db_url is None:
            self.postgres = OwnedPostgres(self.layout, self.ports.postgres)
            self.postgres.start(self.layout.logs / "postgres.log")
            db_url = self.postgres.url
        env = self._server_env(db_url)
        log.info("migrating the Hatchet database")
        self._tool("hatchet-migrate", [], env)
        self._tool("hatchet-admin", ["quickstart", "--skip", "certs", "--generated-config-dir", str(self.layout.config),
                                     "--overwrite=false"], env)
        token = self._token(env)
        lite_log = open(self.layout.logs / "engine.log", "ab")  # noqa: SIM115
        lite = subprocess.Popen([str(self.binaries["hatchet-lite"]), "--config", str(self.layout.config)],
                                env=env, stdin=subprocess.DEVNULL, stdout=lite_log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent, cwd=root)
        lite_log.close()
        self.processes.append(lite)
        self._wait_ready(lite, ready_timeout)
        client = {
            "HATCHET_CLIENT_TOKEN": token,
            "HATCHET_CLIENT_HOST_PORT": f"127.0.0.1:{self.ports.grpc}",
            "HATCHET_CLIENT_SERVER_URL": f"http://127.0.0.1:{self.ports.proxy}",
            "HATCHET_CLIENT_TLS_STRATEGY": "none",
        }
        write_client_env(self.layout.client_env, client)
        self.layout.state.write_text(json.dumps({
            "pid": os.getpid(), "engine_pid": lite.pid,
            "postgres_pid": self.postgres.process.pid if self.postgres and self.postgres.process else None,
            "api": client["HATCHET_CLIENT_SERVER_URL"], "grpc": client["HATCHET_CLIENT_HOST_PORT"],
            "started_at": time.time()}))
        return client

    def _token(self, env: dict[str, str]) -> str:
        """The token of an earlier `up` if the engine still has its keys, else a new one."""
        saved = read_client_env(self.layout.client_env)
        assert self.ports is not None
        same_place = (saved.get("HATCHET_CLIENT_HOST_PORT") == f"127.0.0.1:{self.ports.grpc}"
                      and saved.get("HATCHET_CLIENT_SERVER_URL") == f"http://127.0.0.1:{self.ports.proxy}")
        if saved.get("HATCHET_CLIENT_TOKEN") and same_place:
            return saved["HATCHET_CLIENT_TOKEN"]  # its claims name these very addresses
        out = self._tool("hatchet-admin", ["token", "create", "--config", str(self.layout.config),
                                           "--tenant-id", DEFAULT_TENANT, "--name", "beads-runner"], env)
        token = next((w for w in out.split() if w.startswith("ey") and w.count(".") == 2), None)
        if token is None:
            raise RunnerError("hatchet-admin token create printed no token", fix=f"its output was: {out[-300:]}")
        return token

    def _wait_ready(self, lite: subprocess.Popen, timeout: float) -> None:
        assert self.ports is not None
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.ports.proxy}/api/ready"
        while time.monotonic() < deadline:
            if lite.poll() is not None:
                raise RunnerError(f"hatchet-lite exited at start (status {lite.returncode})",
                                  fix=f"see {self.layout.logs / 'engine.log'}")
            if port_open(self.ports.grpc) and api_ready(url):
                return
            time.sleep(0.3)
        raise RunnerError(f"the Hatchet engine did not become ready within {timeout:.0f} s",
                          fix=f"see {self.layout.logs / 'engine.log'}")

    def stop(self, timeout: float = 30.0) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.postgres is not None:
            self.postgres.stop(timeout)
        self.layout.state.unlink(missing_ok=True)


def api_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def engine_status(state_dir: Path) -> tuple[bool, str]:
    """For `beads-runner hatchet status`: is the local engine up, and where."""
    layout = layout_for(state_dir)
    try:
        state = json.loads(layout.state.read_text())
    except (OSError, ValueError):
        return False, "down: no local engine has been started here (`beads-runner hatchet up`)"
    api = state.get("api", "")
    if api and api_ready(f"{api}/api/ready"):
        return True, f"up: API {api}, gRPC {state.get('grpc')}, pid {state.get('pid')}"
    return False, f"down: the engine last started here (pid {state.get('pid')}) does not answer at {api}"


def serve(state_dir: Path, settings, *, ready_timeout: float = 180.0) -> int:
    """`beads-runner hatchet up`: start the engine, then wait for Ctrl-C or SIGTERM and stop it."""
    import threading

    from filelock import FileLock, Timeout

    layout = layout_for(state_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(layout.root / "up.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunnerError(f"a local Hatchet engine is already up for this repository ({engine_status(state_dir)[1]})",
                          fix="use it, or stop that `beads-runner hatchet up` first") from None
    engine = LocalEngine(layout, find_engine_binaries(settings.bin_dir), database_url=settings.database_url)
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        client = engine.start(ready_timeout=ready_timeout)
        print(f"Hatchet engine up: API {client['HATCHET_CLIENT_SERVER_URL']}, "
              f"gRPC {client['HATCHET_CLIENT_HOST_PORT']}",
              flush=True)
        print(f"client settings in {layout.client_env} (read by beads-runner when HATCHET_CLIENT_TOKEN is unset); "
              "Ctrl-C stops the engine", flush=True)
        while not stop.wait(0.5):
            dead = [p for p in engine.processes if p.poll() is not None]
            if engine.postgres is not None and engine.postgres.process is not None \
                    and engine.postgres.process.poll() is not None:
                dead.append(engine.postgres.process)
            if dead:
                raise RunnerError(f"the engine stopped by itself (pid {dead[0].pid}, status {dead[0].returncode})",
                                  fix=f"see the logs in {layout.logs}, then run `beads-runner hatchet up` again")
        print("stopping the Hatchet engine (its data stays for the next `up`)", flush=True)
        return 0
    finally:
        engine.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        lock.release()
