"""The console's web application (Starlette), and serving it: alone (`beads-runner ui`) or in a
thread of the daemon (`beads-runner start --ui`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from beads_runner.console import api, pages, sse
from beads_runner.console.metrics import Metrics
from beads_runner.console.security import TokenGuard, is_loopback, load_token
from beads_runner.errors import RunnerError
from beads_runner.services import Services

HERE = Path(__file__).parent
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
READ_CACHE_KIB = 64  # SQLite page cache of the console's reading thread, in KiB (bench/console.py measures it)


@dataclass
class ConsoleState:
    """What every request needs: the repository's services and its engine."""

    svc: Services
    engine_factory: Callable[[], Any] | None = None
    shared_engine: bool = False  # the daemon's own engine: submit through it
    metrics: Metrics = field(default_factory=Metrics)
    version: int = 0  # bumped by an action, so event streams look again at once
    _engine: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _here: threading.local = field(default_factory=threading.local)

    def engine(self):
        """The engine, built on first use; None while the embedded engine has no database yet."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = (self.engine_factory or _default_engine(self.svc))()
        if not getattr(self._here, "small", False):
            # The thread reading for the console (one worker, see api.in_thread) gets its own SQLite
            # connection: keep its page cache small (measured: 2 MiB by default, most of it kept).
            limit = getattr(self._engine, "limit_cache_here", None)
            if limit is not None:
                limit(READ_CACHE_KIB)
                self._here.small = True
        return self._engine

    def changed(self) -> None:
        self.version += 1


def _default_engine(svc: Services) -> Callable[[], Any]:
    from beads_runner.run_views import _engine

    return lambda: _engine(svc)


def build_app(svc: Services, *, engine: Any = None, host: str = DEFAULT_HOST, token: str | None = None) -> Starlette:
    """The console for one repository. With `engine`, that engine (the daemon's) is used."""
    state = ConsoleState(svc, engine_factory=(lambda: engine) if engine is not None else None,
                         shared_engine=engine is not None, metrics=Metrics(in_child=engine is not None))
    token = token or load_token(svc.state_dir)
    app = Starlette(
        routes=[*api.ROUTES, *sse.ROUTES, *pages.ROUTES,
                Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static")],
        middleware=[Middleware(TokenGuard, token=token, bound_host=host)],
    )
    app.state.console = state
    app.state.engine_kind = svc.config.engine.kind
    return app


def check_bind(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise RunnerError(f"--port {port} is not a TCP port", fix="give a port from 1 to 65535 (default 8765)")
    if not host:
        raise RunnerError("--host is empty", fix="give an address to bind, e.g. 127.0.0.1")


def make_server(app: Starlette, host: str, port: int):
    import uvicorn

    # Plain asyncio and h11, no websockets: nothing loaded that the console does not use.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=1, loop="asyncio", http="h11", ws="none")
    return uvicorn.Server(config)


def url_for(host: str, port: int, token: str | None = None) -> str:
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}/"
    if token is None:
        return base
    # Loopback: the token goes in the fragment (never sent to a server, never in a log); the page keeps
    # it for its buttons. Elsewhere the query sets the console's cookie once.
    return base + (f"#token={token}" if is_loopback(host) else f"?token={token}")


def serve(svc: Services, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, open_browser: bool = False,
          echo: Callable[[str], None] = print) -> None:
    """`beads-runner ui`: serve until Ctrl-C."""
    check_bind(host, port)
    token = load_token(svc.state_dir)
    app = build_app(svc, host=host, token=token)
    server = make_server(app, host, port)
    echo(f"beads-runner console on {url_for(host, port)} (Ctrl-C to stop)")
    echo(f"actions need the token in {svc.state_dir / 'ui.token'}")
    if not is_loopback(host):
        echo(f"bound to {host}: every request needs the token (open {url_for(host, port)}?token=<token> once)")
    if open_browser:
        import webbrowser

        threading.Timer(0.5, webbrowser.open, args=(url_for(host, port, token),)).start()
    server.run()


def start_in_thread(svc: Services, engine: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
    """`start --ui`: the console in a daemon thread of the runner, reading the runner's own engine.
    Returns the uvicorn server (`should_exit = True` stops it)."""
    check_bind(host, port)
    server = make_server(build_app(svc, engine=engine, host=host), host, port)
    thread = threading.Thread(target=server.run, name="console", daemon=True)
    thread.start()
    # Up, or why not (a port in use ends uvicorn's thread): before the runner claims anything.
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        thread.join(0.05)
    if not server.started:
        server.should_exit = True
        raise RunnerError(f"the console could not listen on {host}:{port}",
                          fix="choose another --ui-port (is another console or program on it?), or leave out --ui")
    return server
