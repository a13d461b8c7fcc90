"""Who may ask the console what.

- The token lives in `.beads-runner/ui.token` (mode 0600, made on first use). It is never shown on
  a page nor written to a log.
- Bound to a loopback address (the default), reading needs nothing, but the request's Host must be
  a loopback name (a web page elsewhere cannot reach the console by DNS rebinding); every POST needs
  `Authorization: Bearer <token>`, else 401.
- Bound to any other address, every request needs the token: the header, or the cookie set by
  opening `/?token=<token>` once (for a browser's page loads and its event stream). A POST still
  needs the header: a cookie alone never changes anything (no cross-site request can).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_FILE = "ui.token"
COOKIE = "beads_runner_console"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_token(state_dir: Path) -> str:
    """The console's token, made (0600) if there is none yet."""
    path = Path(state_dir) / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
            return token
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def _host_name(request: Request) -> str:
    host = request.headers.get("host", "")
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class TokenGuard:
    """ASGI middleware applying the rules above."""

    def __init__(self, app: ASGIApp, *, token: str, bound_host: str):
        self.app = app
        self.token = token
        self.loopback = is_loopback(bound_host)

    def _bearer_ok(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())

    def _cookie_ok(self, request: Request) -> bool:
        value = request.cookies.get(COOKIE, "")
        return bool(value) and hmac.compare_digest(value.encode(), self.token.encode())

    def check(self, request: Request) -> Response | None:
        if self.loopback and not is_loopback(_host_name(request)):
            return PlainTextResponse("this console answers to a loopback host name only (127.0.0.1, localhost)",
                                     status_code=421)
        if request.method in ("GET", "HEAD") and not self.loopback and not (
                self._bearer_ok(request) or self._cookie_ok(request)):
            given = request.query_params.get("token", "")
            if given and hmac.compare_digest(given.encode(), self.token.encode()):
                response = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
                response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
                return response
            return _unauthorized("this console is bound to a non-loopback address: every request needs the token")
        if request.method not in ("GET", "HEAD") and not self._bearer_ok(request):
            return _unauthorized("a change needs the token")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.check(Request(scope))
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _unauthorized(why: str) -> Response:
    return JSONResponse({"error": f"{why}: send `Authorization: Bearer <token>`",
                         "fix": "the token is in .beads-runner/ui.token (readable by its owner only)"},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
