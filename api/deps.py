"""FastAPI dependencies shared by the routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.services import Services

# JSON bodies here are small (a config, a URI): anything bigger is refused with 413 unread.
JSON_BODY_LIMIT = 1024 * 1024
# Paging offsets become SQL integers: past a signed 64-bit value SQLite raises OverflowError
# (a 500) and PostgreSQL an out-of-range error, so larger ones are refused with 422.
MAX_OFFSET = 2**63 - 1


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_session(request: Request) -> Iterator[Session]:
    with get_services(request).db.session() as session:
        yield session


def base_url(request: Request) -> str:
    """Where clients reach this service: FLYWHEEL_PUBLIC_URL, else what the request used."""
    return get_services(request).settings.public_url or str(request.base_url).rstrip("/")


ServicesDep = Annotated[Services, Depends(get_services)]
# scope="function": commit (and give the connection back) before the response is sent, so a
# client's next request sees what this one wrote, and no connection is held while a shard streams.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def newest_first_page(session: Session, model, limit: int, offset: int, *where, out=lambda row: row) -> dict:
    """One page of `model` rows (newest first, id as tie-break) in the list endpoints' shape."""

    total = session.scalar(select(func.count()).select_from(model).where(*where))
    rows = session.scalars(select(model).where(*where).order_by(model.created_at.desc(), model.id)
                           .limit(limit).offset(offset))
    return {"items": [out(r) for r in rows], "total": total, "limit": limit, "offset": offset}
