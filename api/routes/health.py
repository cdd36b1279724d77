"""/healthz: the only route without a token (load balancers and probes)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from api.deps import ServicesDep
from api.schemas import Health, Problem

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Problem}})
def healthz(services: ServicesDep) -> dict:
    try:
        services.db.ping()
    except Exception as e:
        raise HTTPException(503, detail=f"database unreachable: {type(e).__name__}") from None
    return {"status": "ok", "database": "ok"}
