"""Safe by default: the Host checked against DNS rebinding, cross-site browser writes refused, bodies bounded
and JSON only (the `Guard` middleware), and an optional bearer key or basic auth on every API route
(`Auth`, a dependency). No route takes a file path."""

from __future__ import annotations

import base64
import secrets

from fastapi import Request
from fastapi.responses import JSONResponse

from .models import MAX_BODY

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
# POSTs that carry no body: everything else under /sdapi/ must be application/json
BODILESS = ("/sdapi/v1/interrupt", "/sdapi/v1/skip", "/sdapi/v1/refresh-loras", "/sdapi/v1/refresh-checkpoints",
            "/sdapi/v1/refresh-vae")


def error(status: int, detail, headers=None) -> JSONResponse:
    """An error answer in A1111's shape."""
    return JSONResponse({"error": "HTTPException" if status != 422 else "ValidationError", "detail": detail},
                        status_code=status, headers=headers)


class Refused(Exception):
    """Raised by a dependency; answered as `error(status, detail, headers)`."""

    def __init__(self, status: int, detail: str, headers: dict | None = None):
        self.status, self.detail, self.headers = status, detail, headers


class Auth:
    """The dependency that checks credentials: `Authorization: Bearer KEY`, or basic auth with one of the
    comma-separated user:password pairs. With neither configured, every request passes."""

    def __init__(self, api_key: str | None, api_auth: str | None):
        self.api_key, self.pairs = api_key, api_auth.split(",") if api_auth else []

    def allows(self, request: Request) -> bool:
        if not self.api_key and not self.pairs:
            return True
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if self.api_key and scheme.lower() == "bearer" and secrets.compare_digest(value.strip(), self.api_key):
            return True
        if self.pairs and scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).decode()
            except ValueError:
                return False
            return any(secrets.compare_digest(given, pair) for pair in self.pairs)
        return False

    def __call__(self, request: Request) -> None:
        if not self.allows(request):
            raise Refused(401, "missing or wrong credentials: send Authorization: Bearer KEY (or basic auth)",
                          {"WWW-Authenticate": "Bearer" if self.api_key else 'Basic realm="sumie"'})


def refusal(request: Request, hosts: set[str] | None) -> JSONResponse | None:
    """Why `request` is refused before routing, or None. `hosts`: the Host names answered; None: loopback
    names only; an empty set: any name (a server the user chose to expose)."""
    host = request.headers.get("host", "").lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if hosts is None and name not in LOCAL_HOSTS:
        return error(400, f"Host {host!r} is not allowed; this server answers to localhost only "
                          f"(start it with --host to serve other names)")
    if hosts and name not in hosts:
        return error(400, f"Host {host!r} is not allowed")
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    site, origin = request.headers.get("sec-fetch-site"), request.headers.get("origin")
    if site in ("cross-site", "same-site") or (origin is not None and origin.lower().split("://", 1)[-1] != host):
        return error(403, "cross-site requests are refused")
    if request.url.path.startswith("/sdapi/") and request.url.path not in BODILESS:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return error(415, "send the body as application/json")
    size = request.headers.get("content-length")
    if size is None or not size.isdigit():
        return error(411, "send a Content-Length header")
    if int(size) > MAX_BODY:
        return error(413, f"body over {MAX_BODY // 2**20} MB")
    return None


class Guard:
    """ASGI middleware answering `refusal(request, hosts)` when there is one. Pure ASGI, not
    BaseHTTPMiddleware, which would hide client disconnects from the routes."""

    def __init__(self, app, hosts: set[str] | None):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refused = refusal(Request(scope), self.hosts)
            if refused is not None:
                return await refused(scope, receive, send)
        await self.app(scope, receive, send)
