"""/v1/tokens: list the service's API tokens and revoke one (admin only).

Tokens are created only on the server's command line (`flywheel token create`), never over
HTTP: the API can take access away, not hand it out, so a leaked admin token cannot mint
others that would outlive its revocation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path

from api.auth import list_tokens, require_admin, revoke_token
from api.deps import JSON_BODY_LIMIT, SessionDep
from api.ids import id_pattern
from api.models import ApiToken, utcnow
from api.schemas import Problem, TokenList, TokenOut

router = APIRouter(tags=["tokens"])
TokenIdPath = Annotated[str, Path(pattern=id_pattern("tok"))]


def token_out(row: ApiToken, now: datetime) -> TokenOut:
    fields = ("id", "name", "scope", "created_at", "last_used_at", "expires_at", "revoked_at")
    return TokenOut.model_validate({**{k: getattr(row, k) for k in fields}, "state": row.state_at(now)})


@router.get("/tokens", response_model=TokenList, dependencies=[Depends(require_admin)])
def list_api_tokens(session: SessionDep) -> dict:
    """Every token, revoked and expired ones included, oldest first: id, name, scope, created,
    last used (refreshed at most once a minute), expiry, revocation."""
    now = utcnow()
    items = [token_out(row, now) for row in list_tokens(session)]
    return {"items": items, "total": len(items)}


@router.post("/tokens/{token_id}/revoke", response_model=TokenOut, dependencies=[Depends(require_admin)],
             max_body_size=JSON_BODY_LIMIT, responses={404: {"model": Problem}})
def revoke_api_token(token_id: TokenIdPath, session: SessionDep) -> TokenOut:
    """Revoke a token: its next request is a 401 (tokens are never cached). Revoking a revoked
    token answers it unchanged."""
    row = revoke_token(session, token_id)
    if row is None:
        raise HTTPException(404, detail=f"no token {token_id}")
    return token_out(row, utcnow())
