"""The engine itself: migrate, quickstart, a token, hatchet-lite; `up`'s loop and `status`."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from beads_runner.errors import RunnerError

from beads_runner.hatchet_local.layout import (
    DEFAULT_TENANT, LocalEngineLayout, die_with_parent, find_engine_binaries, free_port, layout_for, port_open,
    read_client_env, write_client_env,
)
from beads_runner.hatchet_local.postgres import OwnedPostgres

log = structlog.get_logger("beads_runner.hatchet_local")


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
                                preexec_fn=die_with_parent, cwd=root)
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
