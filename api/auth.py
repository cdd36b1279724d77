"""Bearer API tokens: created once by `flywheel token create`, stored only as a hash.

A token is `fw_` + 32 random bytes (urlsafe base64). With 256 bits of entropy a brute force is
out of reach, so a fast keyed hash (HMAC-SHA256, key = `FLYWHEEL_TOKEN_PEPPER`) is enough, as for
GitHub's tokens; a slow KDF (scrypt ~50 ms) would cost that on every request. Lookup is by hash,
so no token is ever compared in plain text.

Scopes: `read` (every GET) and `admin` (also creates corpora and jobs, cancels jobs).

The dashboard's pages and their JavaScript send the token as the HttpOnly SameSite=Strict
cookie `TOKEN_COOKIE` (set by the sign-in form, `POST /sign-in`); it counts for safe methods
only, so a cookie can never create or cancel anything.

Auth off (`--no-auth`, FLYWHEEL_AUTH=0) makes every caller admin, so it is for loopback only:
`check_exposure` refuses to build the app for another interface, and each request must have
arrived on a loopback address (which also covers `uvicorn --factory --host 0.0.0.0`, whose
interface the settings do not know), unless FLYWHEEL_INSECURE_NO_AUTH_ON_PUBLIC_INTERFACE says
otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.ids import new_id
from api.models import SCOPES, ApiToken, utcnow
from api.settings import Settings

TOKEN_PREFIX = "fw_"
# last_used_at is a hint for operators: refreshing it on every request would add a write to each read.
_TOUCH_EVERY = timedelta(minutes=5)
TOKEN_COOKIE = "flywheel_token"
_COOKIE_METHODS = ("GET", "HEAD")

bearer = HTTPBearer(auto_error=False, description="An API token from `flywheel token create NAME [--scope admin]`.")


@dataclass(frozen=True)
class Principal:
    name: str
    scope: str

    def allows(self, scope: str) -> bool:
        return self.scope == "admin" or self.scope == scope


ANONYMOUS_ADMIN = Principal(name="anonymous (--no-auth)", scope="admin")


class InsecureSettings(ValueError):
    """Settings the service refuses to start with."""


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # a host name other than localhost, a unix socket path
        return False
    # A dual-stack socket ("::") sees IPv4 loopback as ::ffff:127.0.0.1.
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def check_exposure(settings: Settings) -> None:
    """InsecureSettings when auth is off on an interface other than loopback, unless asked for."""
    if settings.auth or settings.insecure_no_auth_on_public_interface or is_loopback(settings.host):
        return
    raise InsecureSettings(
        f"auth is off on {settings.host}: anyone who reaches that interface would be admin. Serve on 127.0.0.1, "
        "create tokens (`flywheel token create`), or pass --insecure-no-auth-on-public-interface "
        "(FLYWHEEL_INSECURE_NO_AUTH_ON_PUBLIC_INTERFACE=1)")


def _anonymous_allowed(request: Request, settings: Settings) -> bool:
    """Auth off: only requests that arrived on a loopback address (the socket's own), unless asked for."""
    server = request.scope.get("server")
    return settings.insecure_no_auth_on_public_interface or (server is not None and is_loopback(server[0]))


def hash_token(token: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), token.encode(), hashlib.sha256).hexdigest()


def create_token(session: Session, name: str, scope: str, pepper: str) -> tuple[ApiToken, str]:
    """A new token row and the token itself (shown once, never stored)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    if not name.strip():
        raise ValueError("a token needs a name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(id=new_id("tok"), name=name.strip(), scope=scope, token_hash=hash_token(token, pepper))
    session.add(row)
    session.flush()
    return row, token


def authenticate(session: Session, token: str, pepper: str) -> Principal | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token, pepper)))
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY:
        session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
    return Principal(name=row.name, scope=row.scope)


def presented_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """The bearer token, else (GET/HEAD only) the dashboard's cookie."""
    if credentials is not None:
        return credentials.credentials
    return request.cookies.get(TOKEN_COOKIE) if request.method in _COOKIE_METHODS else None


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def require(scope: str):
    """A dependency that lets the request through with a token of `scope` (or admin)."""

    def check(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        services = request.app.state.services
        if not services.settings.auth:
            if _anonymous_allowed(request, services.settings):
                return ANONYMOUS_ADMIN
            raise HTTPException(403, detail="auth is off (--no-auth): this service answers only on loopback")
        token = presented_token(request, credentials)
        if token is None:
            raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        with services.db.session() as session:
            principal = authenticate(session, token, services.settings.token_pepper)
        if principal is None:
            raise _unauthorized("invalid or revoked token")
        if not principal.allows(scope):
            raise HTTPException(403, detail=f"token {principal.name!r} has scope {principal.scope!r}; "
                                            f"this needs {scope!r}")
        return principal

    return check


require_read = require("read")
require_admin = require("admin")
