"""The PostgreSQL cluster `hatchet up` creates and owns (when engine.hatchet.database_url is unset)."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from beads_runner.errors import RunnerError

from beads_runner.hatchet_local.layout import LocalEngineLayout, PG_USER_CANDIDATES, die_with_parent, find_pg_bin

log = structlog.get_logger("beads_runner.hatchet_local")


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
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
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
