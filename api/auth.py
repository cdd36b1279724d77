"""Bearer API tokens: created once by `flywheel token create`, stored only as a hash.

A token is `fw_` + 32 random bytes (urlsafe base64). With 256 bits of entropy a brute force is
out of reach, so a fast keyed hash (HMAC-SHA256, key = `FLYWHEEL_TOKEN_PEPPER`) is enough, as for
GitHub's tokens; a slow KDF (scrypt ~50 ms) would cost that on every request. Lookup is by hash,
so no token is ever compared in plain text.

Scopes: `read` (every GET) and `admin` (also creates corpora and jobs, cancels jobs).

A token may expire (`--expires-in`) and be revoked (`flywheel token revoke`, `POST
/v1/tokens/{id}/revoke`). Every request looks its token up in the database, with no cache, so
a revoked or expired token is refused by the next request. `last_used_at` is refreshed at most
once a minute per token (`_TOUCH_EVERY`), so reads do not turn into writes.

Rate limits (api/rate_limit.py) are applied here too: writes per token, and invalid tokens per
client address.

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
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from api.ids import new_id
from api.models import SCOPES, ApiToken, utcnow
from api.rate_limit import client_address, rate_limits
from api.settings import Settings

TOKEN_PREFIX = "fw_"
# last_used_at is a hint for operators: refreshing it on every request would add a write to each read.
_TOUCH_EVERY = timedelta(minutes=1)
TOKEN_COOKIE = "flywheel_token"
_COOKIE_METHODS = ("GET", "HEAD")
# Methods that change nothing: not counted by the write limit.
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Past this, a datetime overflows (year 9999): refuse rather than fail inside the database.
_LONGEST_EXPIRY = timedelta(days=100 * 365)

bearer = HTTPBearer(auto_error=False, description="An API token from `flywheel token create NAME [--scope admin]`.")


@dataclass(frozen=True)
class Principal:
    name: str
    scope: str
    token_id: str | None = None  # None with auth off

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


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `12h`, `30d`, `2w` (a bare number is seconds); ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: expected a number with s, m, h, d or w (30d, 12h)")
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    # Compared as a number first: timedelta itself overflows on a large enough one.
    if not 0 < seconds <= _LONGEST_EXPIRY.total_seconds():
        raise ValueError(f"{text!r}: a token's lifetime must be positive and at most 100 years")
    return timedelta(seconds=seconds)


def create_token(session: Session, name: str, scope: str, pepper: str,
                 expires_in: timedelta | None = None) -> tuple[ApiToken, str]:
    """A new token row and the token itself (shown once, never stored); `expires_in` None: never expires."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    if not name.strip():
        raise ValueError("a token needs a name")
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValueError("a token's lifetime must be positive")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    row = ApiToken(id=new_id("tok"), name=name.strip(), scope=scope, token_hash=hash_token(token, pepper),
                   created_at=now, expires_at=None if expires_in is None else now + expires_in)
    session.add(row)
    session.flush()
    return row, token


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token, revoked and expired ones included, oldest first."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)))


def revoke_token(session: Session, token_id: str) -> ApiToken | None:
    """Revoke a token (None if there is none); revoking it again keeps the first time."""
    row = session.get(ApiToken, token_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def _touch(session: Session, row: ApiToken, now: datetime) -> None:
    """Refresh last_used_at if it is older than _TOUCH_EVERY. The condition is repeated in the
    UPDATE so that concurrent requests of one token write it once."""
    if row.last_used_at is not None and now - row.last_used_at < _TOUCH_EVERY:
        return
    stale = or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - _TOUCH_EVERY)
    session.execute(update(ApiToken).where(ApiToken.id == row.id, stale).values(last_used_at=now))


def authenticate(session: Session, token: str, pepper: str) -> Principal | None:
    """The token's principal, or None for an unknown, revoked or expired token. Read from the
    database on every call, never cached: a revocation counts from the next request."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token, pepper)))
    now = utcnow()
    if row is None or row.state_at(now) != "active":
        return None
    _touch(session, row, now)
    return Principal(name=row.name, scope=row.scope, token_id=row.id)


def verify_token(request: Request, token: str) -> Principal | None:
    """`authenticate` behind the per-client failure limit: 429 while this client has spent its
    allowance of invalid tokens (before any lookup); an invalid token spends one."""
    services = request.app.state.services
    limits, client = rate_limits(request), client_address(request)
    limits.check_not_blocked(client)
    with services.db.session() as session:
        principal = authenticate(session, token, services.settings.token_pepper)
    if principal is None:
        limits.record_failure(client)
    return principal


def presented_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """The bearer token, else (GET/HEAD only) the dashboard's cookie."""
    if credentials is not None:
        return credentials.credentials
    return request.cookies.get(TOKEN_COOKIE) if request.method in _COOKIE_METHODS else None


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def _token_principal(request: Request, credentials: HTTPAuthorizationCredentials | None, scope: str) -> Principal:
    """The presented token's principal if it has `scope` (or admin); 401, 403 or 429 otherwise."""
    token = presented_token(request, credentials)
    if token is None:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    principal = verify_token(request, token)
    if principal is None:
        raise _unauthorized("invalid, expired or revoked token")
    if not principal.allows(scope):
        raise HTTPException(403, detail=f"token {principal.name!r} has scope {principal.scope!r}; "
                                        f"this needs {scope!r}")
    return principal


def require(scope: str):
    """A dependency that lets the request through with a token of `scope` (or admin)."""

    def check(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        settings = request.app.state.services.settings
        if not settings.auth:
            if not _anonymous_allowed(request, settings):
                raise HTTPException(403, detail="auth is off (--no-auth): this service answers only on loopback")
            principal = ANONYMOUS_ADMIN
        else:
            principal = _token_principal(request, credentials, scope)
        if request.method not in SAFE_METHODS:
            rate_limits(request).check_write(principal.token_id or f"client {client_address(request)}")
        return principal

    return check


require_read = require("read")
require_admin = require("admin")
